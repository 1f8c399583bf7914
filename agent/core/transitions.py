"""The legal transitions of the observed state: which state type may follow which in the published sequence.

This is the one table of them. The core's rules (lifecycle.py, moves.py, validation.py, updates.py,
publish.py) only ever make these transitions; the tests check every decision against this table (the
hypothesis machine over random walks, the unit tests on each scenario), and a test checks that the table
in docs/protocol.md ("Transitions") says the same.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.protocol import ObservedStateType

# None is "no execution" (never seen, or deleted). A state followed by itself is a new revision with the
# same state type: a new desired generation, message or detail.
TRANSITIONS: Mapping[ObservedStateType | None, frozenset[ObservedStateType]] = {
    None: frozenset({"pending", "failed"}),  # created by a desired document, or by a rejection
    "pending": frozenset({"pending", "starting", "stopped"}),
    # A stable execution run again on request that crashes waits for its restart in degraded.
    "starting": frozenset({"starting", "validating", "stopping", "stopped", "failed", "degraded"}),
    "validating": frozenset(
        {
            "validating",
            "running",
            "starting",
            "completed",
            "failed",
            "lost",
            "stopping",
            "degraded",
            "stopped",  # stopped on request while its results were being published
        }
    ),
    "running": frozenset({"running", "degraded", "completed", "failed", "lost", "stopping", "stopped"}),
    "degraded": frozenset({"degraded", "running", "completed", "failed", "lost", "stopping", "stopped"}),
    "stopping": frozenset({"stopping", "stopped", "failed", "starting", "degraded"}),
    "stopped": frozenset({"stopped", "starting", "degraded", "pending"}),
    # Terminal results are left only when stopped on request, or (failed) when the execution existed only
    # as a rejection and a valid document arrives.
    "completed": frozenset({"completed", "stopped"}),
    "failed": frozenset({"failed", "stopped", "pending"}),
    "lost": frozenset({"lost", "stopped", "starting", "degraded"}),  # lost, then restarted under the policy
}


def legal(before: ObservedStateType | None, after: ObservedStateType) -> bool:
    """Whether a status of type ``after`` may be published right after one of type ``before``."""
    return after in TRANSITIONS[before]

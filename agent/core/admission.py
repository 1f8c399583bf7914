"""Admission: whether a node takes a desired document, given what else it runs (PROTOCOL.md, Node control
and admission). Pure, like the lifecycle.

Why here and not where wire messages are translated: a place on the node is a fact about every execution
at the moment of the decision, and only the runtime's single consumer of events sees that moment. Checked
when a document arrives, two documents arriving together would both see the last free place (the first
is still queued, not decided) and both be admitted. The runtime hands this module the executions as they
are when it decides, and turns a refusal into a rejection that follows the Rejection rules.

- A cordoned node rejects a document for an execution it does not know (never accepted, or deleted),
  updates included: ``node is cordoned``. What it knows keeps working: running, stopping, deleting, a
  rollback, and a stopped execution asked to run again.
- With ``limits.max_executions`` N, a document that would add an unfinished execution while N places are
  taken is rejected: ``node is full: max_executions N``. That is a new execution (whatever its desired
  state: the contract's letter), and also a stopped one asked to run again, which would otherwise pass
  the limit by the back door. An update, a new execution whose ``previous_execution_id`` names an
  unfinished execution here that no other unfinished one has taken over, takes its predecessor's place:
  the two count as one until one of them finishes.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.events import DesiredReceived, DesiredRejected
from agent.core.model import Absent, Execution

FINISHED = frozenset({"completed", "failed", "lost", "stopped"})
CORDONED = "node is cordoned"


def full(max_executions: int) -> str:
    return f"node is full: max_executions {max_executions}"


def _unfinished(execution: Execution) -> bool:
    return execution.state_type not in FINISHED


def places_taken(known: Mapping[str, Execution]) -> int:
    """Unfinished executions, an unfinished successor and its unfinished predecessor counting once."""
    unfinished = {eid for eid, e in known.items() if _unfinished(e)}
    shared = {
        e.previous_execution_id
        for eid, e in known.items()
        if eid in unfinished and e.previous_execution_id in unfinished
    }
    return len(unfinished) - len(shared)


def _takes_over(known: Mapping[str, Execution], execution_id: str, previous: str | None) -> bool:
    predecessor = known.get(previous) if previous is not None else None
    if predecessor is None or not _unfinished(predecessor):
        return False
    return not any(
        eid != execution_id and e.previous_execution_id == previous and _unfinished(e)
        for eid, e in known.items()
    )


def refusal(
    known: Mapping[str, Execution],
    state: Execution | Absent,
    event: DesiredReceived,
    *,
    cordoned: bool,
    max_executions: int | None,
) -> str | None:
    """Why the node does not take ``event``'s document for ``state``, or None if it does."""
    document = event.document
    if isinstance(state, Execution) and state.generation > 0:  # known: only a restart needs a place
        if document.generation <= state.generation:
            return None  # stale: the lifecycle ignores it, whatever the node's room
        restart = (
            state.state_type == "stopped"
            and not state.active
            and document.desired_state.state_type == "running"
        )
        if max_executions is None or not restart:
            return None  # it has its place, or stays finished
    else:
        if cordoned:
            return CORDONED
        if max_executions is None or _takes_over(known, state.execution_id, document.previous_execution_id):
            return None
    return full(max_executions) if places_taken(known) >= max_executions else None


def screen(
    known: Mapping[str, Execution],
    state: Execution | Absent,
    event: DesiredReceived,
    *,
    cordoned: bool,
    max_executions: int | None,
) -> DesiredReceived | DesiredRejected:
    """``event``, or its rejection by admission. The digest carries the reason, so the same payload
    refused for another reason later (full, then cordoned) is reported again, and a redelivery while
    nothing changed is reported once."""
    reason = refusal(known, state, event, cordoned=cordoned, max_executions=max_executions)
    if reason is None:
        return event
    return DesiredRejected(event.document.generation, reason, f"{event.digest}:{reason}")

"""When ``apply --wait`` and ``delete`` are done with an execution: reached, failed, or still going.

Pure: one status the agent published, the generation we sent and the state we asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.operator.status import ExecutionView

# What counts as having reached each desired state. `running` also accepts `completed`: a batch job
# that ran to exit 0 did what was asked, even if it was never seen as running by us.
REACHED = {
    "running": frozenset({"completed"}),  # plus `running` with stable_at set, see outcome()
    "stopped": frozenset({"stopped"}),
    "pending": frozenset({"pending"}),
}
FAILED = {
    "running": frozenset({"failed", "lost"}),
    "stopped": frozenset(),  # every state ends in `stopped` when stopped
    "pending": frozenset(),
}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str  # "running, stable", "failed: exit code 3", "rejected: spec.command: ..."


def outcome(wanted: str, generation: int, view: ExecutionView) -> Outcome | None:
    """The end of the wait for ``generation``, or None while the agent is still on its way."""
    if view.rejected_generation == generation:
        return Outcome(False, f"rejected by the agent: {view.rejected_reason}")
    if view.observed_generation < generation:
        return None  # a status about an earlier generation, still in flight
    if wanted == "running" and view.state == "running" and view.stable:
        return Outcome(True, "running, stable")
    if view.state in REACHED.get(wanted, frozenset()):
        return Outcome(True, view.state)
    if view.state in FAILED.get(wanted, frozenset()):
        return Outcome(False, failure_text(view))
    return None


def failure_text(view: ExecutionView) -> str:
    """``failed: exit code 3, validation failed``: the state, then what the agent said about it."""
    exit_code = f"exit code {view.exit_code}" if view.exit_code is not None else ""
    if exit_code in view.message:
        exit_code = ""  # the agent's message already says it ("exited with exit code 3")
    detail = ", ".join(part for part in (exit_code, view.message) if part)
    return f"{view.state}: {detail}" if detail else view.state

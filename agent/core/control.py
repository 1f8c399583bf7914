"""The node's control state (cordon) and how a control document changes it: pure, like the lifecycle.

Generations order control documents as they order desired documents, with one difference: a stale or
bad control document is reported (``control_rejected``), not ignored, because a cordon that silently
did not happen is a maintenance window that goes wrong. The retained document the broker delivers again
on every reconnect is the one in force (same generation, same value) and is not reported; a rejected
payload delivered again is reported once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agent.control import ControlAccepted, ControlParsed


class NodeControl(BaseModel):
    """What the store keeps of the node's control documents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generation: int = 0  # of the control document in force; 0: none ever accepted
    cordoned: bool = False
    rejected_digest: str | None = None  # the last rejected payload, so a redelivery is not re-reported


def on_control(current: NodeControl, parsed: ControlParsed) -> tuple[NodeControl, str | None]:
    """The control state after ``parsed``, and the reason to report if it is rejected (else None)."""
    if isinstance(parsed, ControlAccepted):
        document = parsed.document
        if document.generation > current.generation:
            return NodeControl(generation=document.generation, cordoned=document.cordoned), None
        if document.generation == current.generation and document.cordoned == current.cordoned:
            return current, None  # the document in force, delivered again
        reason = (
            f"generation {document.generation} is not above the node's {current.generation}: stale, ignored; "
            f"the node stays {'cordoned' if current.cordoned else 'uncordoned'}"
        )
    else:
        reason = parsed.reason
    if parsed.digest == current.rejected_digest:
        return current, None
    return current.model_copy(update={"rejected_digest": parsed.digest}), reason

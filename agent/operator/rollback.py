"""After an update failed under ``apply --wait``: did the agent roll back, and what runs now?

The agent rolls back on its own (docs/protocol.md, Updates and rollback): the failed N names its
predecessor P in ``previous_execution_id``; P's status gets ``details.rollback.from`` N and N's
``details.rolled_back_to`` P, and P runs again (or, with start_first, simply keeps running). Whether it
rolls back is decided by the agent at once when N fails, but a P that does not roll back publishes
nothing, so no evidence within ``ROLLBACK_WAIT_S`` of N's failure means there was none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.operator.outcome import failure_text
from agent.operator.render import transition
from agent.operator.session import Session
from agent.operator.snapshot import Key
from agent.operator.status import ExecutionView, parse_status

ROLLBACK_WAIT_S = 5.0


@dataclass(frozen=True)
class Rollback:
    to: str  # the predecessor P
    happened: bool
    view: ExecutionView | None  # P as last seen; None if this node holds no status of P

    @property
    def settled(self) -> bool:
        view = self.view
        return view is not None and (
            (view.state == "running" and view.stable) or view.state in ("failed", "lost")
        )

    def text(self) -> str:
        """What runs now, in words: the end of the story ``apply --wait`` tells for a failed update."""
        view = self.view
        if view is None:
            return f"no rollback: {self.to} is not on this node"
        if not self.happened:
            return f"no rollback: {self.to} is {view.state}" + (", stable" if view.stable else "")
        if view.state == "running" and view.stable:
            return f"rolled back: {self.to} runs now (running, stable)"
        if view.state in ("failed", "lost"):
            return f"rolled back to {self.to}, which then {failure_text(view)}"
        return f"rolling back to {self.to}: {view.state} when the wait ended"

    def record(self) -> dict[str, Any]:
        view = self.view
        return {
            "to": self.to,
            "happened": self.happened,
            "state": view.state if view is not None else None,
            "stable": view.stable if view is not None else False,
        }


def _rolled_back(failed: ExecutionView, previous: ExecutionView | None) -> bool:
    details = failed.document.get("details")
    to = details.get("rolled_back_to") if isinstance(details, dict) else None
    if to == failed.document.get("previous_execution_id"):
        return True
    if previous is None:
        return False
    theirs = previous.document.get("details")
    rollback = theirs.get("rollback") if isinstance(theirs, dict) else None
    return isinstance(rollback, dict) and rollback.get("from") == failed.execution_id


async def follow_rollback(
    session: Session,
    failed: ExecutionView,
    known: dict[Key, ExecutionView],
    timeout: float,
    echo: Callable[[str], None],
) -> Rollback | None:
    """How the failure of ``failed`` (an update) ended: None if it names no predecessor."""
    previous_id = failed.document.get("previous_execution_id")
    if not isinstance(previous_id, str):
        return None
    node = failed.node_id
    keys = {(node, failed.execution_id): failed.execution_id, (node, previous_id): previous_id}
    await session.subscribe(session.topics.status(node, previous_id))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    evidence_by = loop.time() + min(timeout, ROLLBACK_WAIT_S)
    current = Rollback(
        previous_id, _rolled_back(failed, known.get((node, previous_id))), known.get((node, previous_id))
    )
    while not (current.happened and current.settled):
        until = deadline if current.happened else evidence_by
        message = await session.next(max(0.0, until - loop.time()))
        if message is None:
            break
        where = session.topics.where(message.topic)
        if (
            where is None
            or where.kind != "execution_status"
            or (where.node_id, where.execution_id) not in keys
        ):
            continue
        key = (where.node_id, str(where.execution_id))
        view = parse_status(message.payload, *key)
        before = known.get(key)
        if view is None or (before is not None and view.revision <= before.revision):
            continue
        if key[1] == previous_id and not message.retain and (before is None or before.state != view.state):
            echo(transition(view.name, before.state if before else None, view))
        known[key] = view
        failed = known.get((node, failed.execution_id), failed)
        previous = known.get((node, previous_id))
        current = Rollback(previous_id, current.happened or _rolled_back(failed, previous), previous)
    return current

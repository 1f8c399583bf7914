"""The next generation of an execution, read off the broker (the only place every writer shares).

An execution's generation must go up with every desired document, or the agent ignores it as stale.
The broker holds the last desired document (retained) and the agent's last status, whose
``observed_generation`` and ``details.rejected.generation`` count too: the desired topic may have been
cleared or overwritten since. Two operators applying the same execution at the same instant can pick
the same number; the agent then acts on the first and ignores the second as a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.operator.session import Session
from agent.operator.snapshot import SURE_BELOW, Key, exact_topics, fold
from agent.operator.status import ExecutionView


@dataclass
class Current:
    """What the broker retains for some executions: their statuses, desired payloads and nodes."""

    statuses: dict[Key, ExecutionView] = field(default_factory=dict)
    desired: dict[Key, bytes] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> "online" / "offline"

    def absent_nodes(self, keys: Iterable[Key]) -> list[str]:
        """A warning for each node of ``keys`` whose agent is not online: nothing happens there until it is."""
        warnings = []
        for node in dict.fromkeys(node for node, _ in keys):
            state = self.nodes.get(node)
            if state == "online":
                continue
            what = "has never connected (no node status)" if state is None else f"is {state}"
            warnings.append(f"reconcile-agent: node {node} {what}; its agent acts on this once it connects")
        return warnings

    def next_generation(self, key: Key) -> int:
        return next_generation(self.statuses.get(key), self.desired.get(key))


def desired_generation(payload: bytes | None) -> int:
    """The generation of a retained desired payload; 0 if there is none or it is unreadable."""
    if not payload:
        return 0
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return 0
    generation = document.get("generation") if isinstance(document, dict) else None
    return generation if type(generation) is int and generation > 0 else 0


def next_generation(status: ExecutionView | None, desired_payload: bytes | None) -> int:
    """One above every generation the broker shows for the execution; 1 for a new one."""
    seen = [desired_generation(desired_payload)]
    if status is not None:
        seen += [status.observed_generation, status.rejected_generation or 0]
    return max(seen) + 1


async def read_current(session: Session, keys: Iterable[Key]) -> Current:
    """Subscribe to the status and desired topics of ``keys`` and read what is retained (fenced).

    Each topic is exact, so it retains one message at most; past the broker's per-client queue the
    session's QoS 1 subscriptions (kept, to follow the statuses) are cut, and passes read them whole.
    """
    topics = session.topics
    keys = list(keys)
    filters = [topics.node_status(node_id) for node_id in dict.fromkeys(node for node, _ in keys)]
    for node_id, execution_id in keys:
        filters += [topics.status(node_id, execution_id), topics.desired(node_id, execution_id)]
    await session.subscribe(*filters)
    messages = await session.fence()
    if len(filters) >= SURE_BELOW:
        messages += await exact_topics(session.target, filters)
    current = Current(statuses=fold(topics, messages))
    for message in messages:
        where = topics.where(message.topic)
        if where is None:
            continue
        if where.kind == "desired" and where.execution_id is not None:
            current.desired[(where.node_id, where.execution_id)] = message.payload
        elif where.kind == "node_status":
            current.nodes[where.node_id] = _node_state(message.payload)
    return current


def _node_state(payload: bytes) -> str:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "unknown"
    state = document.get("state") if isinstance(document, dict) else None
    return state if isinstance(state, str) else "unknown"

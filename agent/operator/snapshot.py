"""What the broker holds now: the retained statuses behind a fence, folded to the latest per execution."""

from __future__ import annotations

from collections.abc import Iterable

from agent.operator.session import Incoming, Session
from agent.operator.status import ExecutionView, parse_status
from agent.protocol import ANY, FleetTopics

Key = tuple[str, str]  # (node id, execution id)


def fold(topics: FleetTopics, messages: Iterable[Incoming]) -> dict[Key, ExecutionView]:
    """The latest status of each execution; an empty payload (a deleted execution) removes it.

    A revision at or below the one already held is a duplicate (delivery is at least once) and ignored.
    """
    views: dict[Key, ExecutionView] = {}
    for message in messages:
        where = topics.where(message.topic)
        if where is None or where.kind != "execution_status" or where.execution_id is None:
            continue
        key = (where.node_id, where.execution_id)
        view = parse_status(message.payload, *key)
        if view is None:
            if not message.payload:
                views.pop(key, None)
            continue
        held = views.get(key)
        if held is None or view.revision > held.revision:
            views[key] = view
    return views


def ordered(views: dict[Key, ExecutionView]) -> list[ExecutionView]:
    return [views[key] for key in sorted(views)]


async def execution_statuses(
    session: Session, node_id: str = ANY, execution_id: str = ANY
) -> list[ExecutionView]:
    """The retained statuses of the executions matching ``node_id`` and ``execution_id`` (``+``: any)."""
    await session.subscribe(session.topics.status(node_id, execution_id))
    return ordered(fold(session.topics, await session.fence()))

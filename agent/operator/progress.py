"""Following executions live until each reaches its goal: the shared loop of ``apply --wait`` and ``delete``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from agent.operator.outcome import Outcome, outcome
from agent.operator.render import transition
from agent.operator.session import Session
from agent.operator.snapshot import Key
from agent.operator.status import ExecutionView, parse_status


@dataclass(frozen=True)
class Goal:
    wanted: str  # the desired state_type that was published
    generation: int  # the generation it was published with


async def follow(
    session: Session,
    goals: dict[Key, Goal],
    known: dict[Key, ExecutionView],
    timeout: float,
    echo: Callable[[str], None],
) -> dict[Key, Outcome]:
    """Read statuses until every goal has an outcome or ``timeout`` passes; missing keys timed out.

    ``known`` holds the statuses seen before (the retained ones) and is updated, so a transition line
    starts from what the operator last saw and a redelivered revision is not shown twice.
    """
    results: dict[Key, Outcome] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(results) < len(goals):
        message = await session.next(max(0.0, deadline - loop.time()))
        if message is None:
            break
        where = session.topics.where(message.topic)
        if where is None or where.kind != "execution_status" or where.execution_id is None:
            continue
        key = (where.node_id, where.execution_id)
        if key not in goals or key in results:
            continue
        view = parse_status(message.payload, *key)
        if view is None:
            if not message.payload:
                echo(f"{key[0]}/{key[1]}  status cleared (deleted by someone else?)")
            continue
        before = known.get(key)
        if before is not None and view.revision <= before.revision:
            continue  # at-least-once delivery: a revision we have already seen
        if before is None or before.state != view.state:
            echo(transition(view.name, before.state if before else None, view))
        known[key] = view
        result = outcome(goals[key].wanted, goals[key].generation, view)
        if result is not None:
            results[key] = result
    return results

"""``delete --node N EXECUTION``: the protocol's polite order, stopped, wait, then clear.

Clearing the desired topic alone would also stop the workload (the agent stops what it deletes), but
then nobody sees how it stopped; publishing ``stopped`` first leaves a ``stopping``/``stopped`` trail and
an exit code in the status before it goes. An execution that has already ended needs no stop.
"""

from __future__ import annotations

import argparse
import asyncio

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.generations import read_current
from agent.operator.progress import Goal, follow
from agent.operator.render import note, out
from agent.operator.session import Session, connect
from agent.operator.snapshot import Key
from agent.operator.status import ExecutionView
from agent.protocol import dumps

FINAL = frozenset({"stopped", "completed", "failed", "lost"})  # no workload left to stop


async def delete(args: argparse.Namespace, target: Target) -> int:
    key: Key = (args.node, args.execution)
    name = f"{args.node}/{args.execution}"
    async with connect(target) as session:
        current = await read_current(session, [key])
        status = current.statuses.get(key)
        if status is None and not current.desired.get(key):
            raise OperatorError(f"no execution {args.execution!r} on node {args.node}")
        for warning in current.absent_nodes([key]):
            note(warning)
        if status is not None and status.state not in FINAL and not args.force:
            await _stop(session, key, current.next_generation(key), dict(current.statuses), args.timeout)
        await session.publish(session.topics.desired(*key), b"", retain=True)
        if status is None:
            # No agent has reported on it (its node may never have run): nothing will clear a status.
            out(f"{name}  desired document cleared; no status to wait for")
            return EXIT_OK
        out(f"{name}  desired document cleared")
        if not await _status_cleared(session, key, args.timeout):
            raise OperatorError(
                f"{name}: the desired document is cleared, but node {args.node} has not cleared the status "
                f"after {args.timeout:g}s; is its agent running?"
            )
    out(f"{name}  deleted")
    return EXIT_OK


async def _stop(
    session: Session, key: Key, generation: int, known: dict[Key, ExecutionView], timeout: float
) -> None:
    name = f"{key[0]}/{key[1]}"
    # The short form: once started, a document without spec keeps the spec (docs/protocol.md).
    document = {"execution_id": key[1], "generation": generation, "desired_state": {"state_type": "stopped"}}
    await session.publish(session.topics.desired(*key), dumps(document), retain=True)
    out(f"{name}  generation {generation} applied (desired stopped)")
    results = await follow(session, {key: Goal("stopped", generation)}, known, timeout, out)
    result = results.get(key)
    if result is None:
        raise OperatorError(
            f"{name}: not stopped after {timeout:g}s; it is still there (use --force to clear it anyway)"
        )
    if not result.ok:
        raise OperatorError(f"{name}: the stop was not accepted: {result.summary}")


async def _status_cleared(session: Session, key: Key, timeout: float) -> bool:
    status_topic = session.topics.status(*key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = await session.next(max(0.0, deadline - loop.time()))
        if message is None:
            return False
        if message.topic == status_topic and not message.payload:
            return True

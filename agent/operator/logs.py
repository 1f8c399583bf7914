"""``logs [--node N] EXECUTION [--stderr] [--tail BYTES] [-f]``: an execution's output, over the bus.

A log request (PROTOCOL.md, Logs on request) on ``P/nodes/N/logs/request``, the replies read off
``P/nodes/N/logs/R`` (``R`` a fresh request id) and their data written to stdout as it comes, in ``seq``
order (a QoS 1 duplicate is skipped). Exit 0 at ``eof``; 1 with the agent's reason for an error reply, for
an execution no node has, or a node that does not answer within ``--timeout``. Without ``--node`` the
node is the one whose retained status names the execution. Ctrl-C during ``-f`` sends a cancel, waits a
moment for the agent's last reply, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from typing import Any

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.session import Session, connect
from agent.operator.snapshot import execution_statuses
from agent.protocol import ANY, MAX_FOLLOW_S

CANCEL_WAIT_S = 2.0  # after Ctrl-C: how long the agent's last reply may take


async def logs(args: argparse.Namespace, target: Target) -> int:
    node = args.node or await _node_of(target, args.execution)
    async with connect(target) as session:
        request_id = f"cli-{uuid.uuid4().hex[:16]}"
        replies = session.topics.log_replies(node, request_id)
        await session.subscribe(replies)
        request: dict[str, Any] = {
            "request_id": request_id,
            "execution_id": args.execution,
            "stream": "stderr" if args.stderr else "stdout",
            "tail_bytes": args.tail,
            "follow": args.follow,
        }
        if args.follow:
            request["follow_s"] = MAX_FOLLOW_S
        await session.publish(session.topics.log_requests(node), json.dumps(request).encode(), retain=False)
        try:
            await _print_replies(session, replies, node, args.timeout, follow=args.follow)
        except asyncio.CancelledError:
            if args.follow:  # Ctrl-C: end the follow on the node too, then let main say how it ended
                await asyncio.shield(_cancel(session, node, request_id, replies))
            raise
    return EXIT_OK


async def _node_of(target: Target, execution_id: str) -> str:
    snapshot = await execution_statuses(target, ANY, execution_id)
    nodes = sorted({v.node_id for v in snapshot.ordered()})
    if not nodes:
        raise OperatorError(f"no execution {execution_id!r} on any node (give --node to ask one directly)")
    if len(nodes) > 1:
        raise OperatorError(f"{execution_id!r} is on several nodes ({', '.join(nodes)}): give --node")
    return nodes[0]


async def _print_replies(session: Session, topic: str, node: str, timeout: float, *, follow: bool) -> None:
    expected = 0
    while True:
        # Until the first reply the node must answer in time; a follow may then be quiet for as long as
        # its workload is.
        message = await session.next(timeout if expected == 0 or not follow else None)
        if message is None:
            raise OperatorError(f"node {node} did not answer the log request within {timeout:g} s")
        if message.topic != topic:
            continue
        reply = _reply(message.payload)
        seq = reply.get("seq")
        if not isinstance(seq, int) or seq < expected:
            continue  # a duplicate (QoS 1 delivers at least once)
        expected = seq + 1
        if reply.get("error"):
            raise OperatorError(f"node {node}: {reply['error']}")
        data = reply.get("data")
        if isinstance(data, str) and data:
            sys.stdout.buffer.write(data.encode())
            sys.stdout.buffer.flush()
        if reply.get("eof") is True:
            return


def _reply(payload: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(payload)
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


async def _cancel(session: Session, node: str, request_id: str, topic: str) -> None:
    """Send the cancel and wait a moment for the follow's last reply; never raises."""
    cancel = json.dumps({"request_id": request_id, "cancel": True}).encode()
    with contextlib.suppress(Exception):
        await session.publish(session.topics.log_requests(node), cancel, retain=False)
        async with asyncio.timeout(CANCEL_WAIT_S):
            while True:
                message = await session.next()
                if message is not None and message.topic == topic and _reply(message.payload).get("eof"):
                    return

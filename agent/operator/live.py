"""``watch`` (status changes across nodes) and ``events`` (the agents' events), followed live.

Both run until Ctrl-C, or ``--timeout`` seconds for scripts (``events`` also stops after ``--count``).
The line "watching ..." / "listening ..." on stderr means the subscription is in place: anything that
happens from then on is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.render import clock, execution_table, note, out, out_json, transition
from agent.operator.session import Incoming, Session, connect
from agent.operator.snapshot import Key, execution_statuses, ordered
from agent.operator.status import ExecutionView, parse_status, parse_time
from agent.protocol import ANY, dumps


class _Deadline:
    """Seconds left until ``--timeout``; None means no limit (until Ctrl-C)."""

    def __init__(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._at = None if timeout is None else loop.time() + timeout

    def left(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - self._loop.time())


@dataclass
class _Watch:
    """What the operator has seen, so each line says what changed from it."""

    session: Session
    as_json: bool
    executions: dict[Key, ExecutionView] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> online/offline
    quiet: bool = False  # remember without printing

    def show(self, message: Incoming) -> None:
        where = self.session.topics.where(message.topic)
        if where is None:
            return
        if where.kind == "node_status":
            self._node(where.node_id, message.payload)
        elif where.kind == "execution_status" and where.execution_id is not None:
            self._execution((where.node_id, where.execution_id), message.payload)

    def _node(self, node_id: str, payload: bytes) -> None:
        document = _json_object(payload)
        state = str(document.get("state", "")) if document else ""
        before = self.nodes.get(node_id)
        if not state or state == before:
            return  # node status is republished on every count change; only online/offline is news
        self.nodes[node_id] = state
        record = {"kind": "node", "node_id": node_id, "status": document}
        self._emit(record, f"{clock()}  {node_id}  node {before or '(new)'} -> {state}")

    def _execution(self, key: Key, payload: bytes) -> None:
        view = parse_status(payload, *key)
        before = self.executions.get(key)
        if view is None:
            if payload or before is None:
                return
            del self.executions[key]
            self._emit(_execution_record(key, None), f"{clock()}  {key[0]}/{key[1]}  deleted")
            return
        if before is not None and view.revision <= before.revision:
            return  # at-least-once delivery: already shown
        self.executions[key] = view
        self._emit(
            _execution_record(key, view.document),
            f"{clock(view.updated_at)}  {transition(view.name, before.state if before else None, view)}",
        )

    def _emit(self, record: dict[str, Any], line: str) -> None:
        if self.quiet:
            return
        if self.as_json:
            out_json(record, lines=True)
        else:
            out(line)


async def watch(args: argparse.Namespace, target: Target) -> int:
    node_id: str = args.node or ANY
    async with connect(target) as session:
        topics = session.topics
        # Live first, so no change falls between the snapshot and the stream; what this subscription
        # brings of the retained statuses is cut at the broker's queue, the snapshot brings them whole.
        await session.subscribe(topics.status(node_id), topics.node_status(node_id))
        retained = await session.fence()
        snapshot = await execution_statuses(target, node_id)
        seen = _Watch(session, args.output == "json")
        # The retained state: as JSON lines for scripts; for people, taken in silently and shown as a table.
        seen.quiet = not seen.as_json
        for message in retained:
            seen.show(message)
        for node, document in snapshot.nodes.items():
            seen.show(Incoming(topics.node_status(node), dumps(document), retain=True))
        for view in snapshot.ordered():
            seen.show(Incoming(topics.status(view.node_id, view.execution_id), dumps(view.document), True))
        seen.quiet = False
        if not seen.as_json and seen.executions:
            out(execution_table(ordered(seen.executions), datetime.now(UTC)))
            out()
        for warning in snapshot.warnings:
            note(warning)
        note(f"watching {topics.status(node_id)} (Ctrl-C to stop)")
        deadline = _Deadline(args.timeout)
        while (change := await session.next(deadline.left())) is not None:
            seen.show(change)
    return EXIT_OK


async def events(args: argparse.Namespace, target: Target) -> int:
    node_id: str = args.node or ANY
    shown = 0
    async with connect(target) as session:
        topic_filter = session.topics.events(node_id)
        await session.subscribe(topic_filter)
        note(f"listening for events on {topic_filter} (Ctrl-C to stop)")
        deadline = _Deadline(args.timeout)
        while args.count is None or shown < args.count:
            message = await session.next(deadline.left())
            if message is None:
                break
            event = _json_object(message.payload)
            if event is None or (args.type and event.get("type") not in args.type):
                continue
            if args.output == "json":
                out_json(event, lines=True)
            else:
                out(event_line(event))
            shown += 1
    if args.count is not None and shown < args.count:
        raise OperatorError(f"{shown} of {args.count} events arrived within {args.timeout:g}s")
    return EXIT_OK


def event_line(event: dict[str, Any]) -> str:
    """``10:00:12Z  node-1  restart  web-2  exit_code=1 restart_count=1``."""
    known = ("type", "node_id", "execution_id", "at")
    extra = " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in event.items()
        if key not in known
    )
    at = parse_time(event.get("at"))
    line = f"{clock(at)}  {event.get('node_id', '?')}  {event.get('type', '?')}  {event.get('execution_id') or '-'}"
    return f"{line}  {extra}" if extra else line


def _execution_record(key: Key, status: dict[str, Any] | None) -> dict[str, Any]:
    return {"kind": "execution", "node_id": key[0], "execution_id": key[1], "status": status}


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None

"""Intake: a desired document as it arrives off the wire, turned into the core event it stands for.

Owns the way in: the topic's execution id, the payload parsed and checked against the protocol
(agent/protocol.py) and against what this node can serve (a publisher it has, limits it can enforce),
and the one :class:`agent.core.events.Event` that results, handed to the runtime's queue. It decides
nothing and stores nothing: no store, no MQTT client, no executor (what it asks of the node comes in as
two functions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog

from agent.control import ControlParsed, parse_control
from agent.core.events import DesiredDeleted, DesiredReceived, DesiredRejected, Event
from agent.names import id_problem
from agent.protocol import (
    Accepted,
    Deleted,
    Parsed,
    Publisher,
    Rejected,
    Topics,
    parse_desired,
    payload_digest,
)

log = structlog.get_logger("agent.intake")


class Runtime(Protocol):
    """What intake hands its events to (agent/runtime.py)."""

    def submit(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None: ...

    def submit_control(self, parsed: ControlParsed) -> None: ...

    def node_event(self, event_type: str, once: str | None = None, **fields: Any) -> None: ...


def to_event(parsed: Parsed) -> Event:
    if isinstance(parsed, Accepted):
        return DesiredReceived(parsed.document, parsed.digest)
    if isinstance(parsed, Deleted):
        return DesiredDeleted()
    return DesiredRejected(parsed.generation, parsed.reason, parsed.digest)


class Intake:
    def __init__(
        self,
        topics: Topics,
        max_payload: int,
        runtime: Runtime,
        publisher_problem: Callable[[Publisher], str | None],
        limits_refusal: Callable[[list[str]], str | None],
        *,
        on_log_request: Callable[[bytes], None] | None = None,
    ) -> None:
        self.topics = topics
        self._max_payload = max_payload
        self._runtime = runtime
        self._publisher_problem = publisher_problem  # why this node cannot serve a publisher, or None
        self._limits_refusal = limits_refusal  # why it cannot enforce resource limits, or None
        self._on_log_request = on_log_request  # agent/log_service.py: served apart, never a core event
        self.log = log.bind(node=topics.node_id)

    def on_message(self, topic: str, payload: bytes) -> None:
        """A desired or control document arrived: turn it into a core event (a log request goes to the log
        service). Never raises."""
        if topic == self.topics.control:
            self._runtime.submit_control(parse_control(payload))
            return
        if topic == self.topics.log_requests:
            if self._on_log_request is not None:
                self._on_log_request(payload)
            return
        execution_id = self.topics.execution_of_desired(topic)
        if execution_id is None:
            self.log.warning("message on an unexpected topic", topic=topic)
            return
        problem = id_problem(execution_id)
        if problem is not None:
            # No status topic can be made for a bad name: report it as a node event, once per payload ever
            # (the retained payload comes back on every reconnect and after every restart).
            if payload:
                reason = f"execution id in topic {topic!r} {problem}"
                once = f"bad-topic\0{topic}\0{payload_digest(payload)}"
                self._runtime.node_event("desired_rejected", once=once, generation=None, reason=reason)
                self.log.warning("desired document rejected", topic=topic, reason=reason)
            return
        parsed = parse_desired(execution_id, payload, self._max_payload)
        self._runtime.submit(execution_id, to_event(self._enforceable(self._servable(parsed))))

    def _servable(self, parsed: Parsed) -> Parsed:
        """Reject on arrival a spec whose publisher this node cannot serve (a stop never needs one)."""
        if not isinstance(parsed, Accepted):
            return parsed
        document = parsed.document
        if document.spec is None or document.spec.publisher is None:
            return parsed
        if document.desired_state.state_type == "stopped":
            return parsed
        problem = self._publisher_problem(document.spec.publisher)
        if problem is None:
            return parsed
        return Rejected(document.generation, problem, parsed.digest)

    def _enforceable(self, parsed: Parsed) -> Parsed:
        """``parsed``, or its rejection if it asks for limits this node cannot enforce (never ignored; a stop
        never needs them)."""
        if not isinstance(parsed, Accepted) or parsed.document.spec is None:
            return parsed
        if parsed.document.desired_state.state_type == "stopped":
            return parsed
        resources = parsed.document.spec.resources
        refusal = None if resources is None else self._limits_refusal(list(resources.values))
        if refusal is None:
            return parsed
        return Rejected(parsed.document.generation, f"spec.resources: {refusal}", parsed.digest)

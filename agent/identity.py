"""One node id, one agent: the check before acting, and the signs of another agent while running.

Each state directory has an instance id (agent/schema.py); the node status carries it and the host name.
Before the runtime acts on anything, :func:`check_alone` reads the retained node status of this node id
over a connection of its own (another client id, so it takes no session from anybody):

- none, ``offline``, or ``online`` with this instance id (a restart of this agent): go on at once;
- ``online`` with another instance id: a live agent republishes its node status every
  ``keepalive_s / 2`` (:data:`REFRESH_FRACTION`), and its will says ``offline`` when its connection
  drops. So wait up to ``keepalive_s`` (twice the refresh period) for news of that instance: an update
  still ``online`` means it is alive, so refuse to start (:class:`IdentityConflict`, exit 2); ``offline``
  or silence means the retained document is stale (its agent died without its will reaching the broker,
  e.g. across a broker restart), so go on.

The waiting is bounded (connect timeout plus ``keepalive_s``), and an unreachable broker skips the check
with a warning: workloads must keep being supervised through a broker outage.

While running, the agent stops acting rather than fight when another instance publishes ``online``
under its node id, or when its session is taken over again and again (:class:`Takeovers`): another
client with the same client id (an agent that never checked, or a copied configuration).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import structlog

log = structlog.get_logger("agent.identity")

REFRESH_FRACTION = 0.5  # a live agent republishes its node status every keepalive_s * this
TAKEOVER_LIMIT = 3  # sessions in a row lost soon after they were made: another client has our client id


class IdentityConflict(Exception):
    """Another agent acts for this node id; the message names it and says what to do."""


def parse_status(payload: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def other_online(document: dict[str, Any] | None, instance_id: str) -> bool:
    """Whether a node status says another instance is online (an agent before instance ids included)."""
    return (
        document is not None
        and document.get("state") == "online"
        and document.get("instance_id") != instance_id
    )


def describe(node_id: str, document: dict[str, Any]) -> str:
    instance = document.get("instance_id") or "(an agent without an instance id)"
    host = document.get("hostname") or "an unknown host"
    return f"node id {node_id!r} is in use by another agent: instance {instance} on host {host}"


def conflict_error(node_id: str, document: dict[str, Any], how: str) -> IdentityConflict:
    return IdentityConflict(
        f"{describe(node_id, document)} {how}. Two agents must never act for one node id: give this one "
        "its own node_id (cloned machines share host names, the default), or stop the other one."
    )


async def check_alone(
    settings: dict[str, Any], topic: str, node_id: str, instance_id: str, keepalive_s: float
) -> None:
    """Raise :class:`IdentityConflict` if another live instance is online under this node id."""
    check_settings = {**settings, "identifier": f"{settings['identifier']}-check-{instance_id[:8]}"}
    try:
        async with aiomqtt.Client(**check_settings, clean_session=True) as client:
            await client.subscribe(topic, qos=1)
            # A second subscribe to the same filter: its acknowledgement comes after the retained message
            # of the first (mosquitto queues them in order), so no fixed wait is needed to know there is none.
            await client.subscribe(topic, qos=1)
            await _judge(client, node_id, instance_id, keepalive_s)
    except aiomqtt.MqttError as exc:
        log.warning("cannot check that no other agent uses this node id: broker unreachable", error=str(exc))


async def _judge(client: aiomqtt.Client, node_id: str, instance_id: str, keepalive_s: float) -> None:
    retained: dict[str, Any] | None = None
    messages = client.messages
    for _ in range(len(messages)):  # what arrived with the subscriptions: the retained document, if any
        message = await anext(messages)
        retained = parse_status(_payload(message)) if message.retain else retained
    if not other_online(retained, instance_id):
        return
    assert retained is not None
    other = retained.get("instance_id")
    log.warning(
        "the retained node status says another agent is online: waiting for news of it",
        other=describe(node_id, retained),
        wait_s=keepalive_s,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(keepalive_s):
            while True:
                message = await anext(messages)
                document = parse_status(_payload(message))
                if message.retain or document is None or document.get("instance_id") != other:
                    continue
                if document.get("state") == "online":
                    waited = loop.time() - started
                    raise conflict_error(
                        node_id, document, f"and online (it updated its status {waited:.1f} s into the check)"
                    )
                log.info("the other agent went offline: its node status was its last word")
                return
    except TimeoutError:
        log.warning(
            "the other agent's online status is stale: no update in the wait, taking over this node id",
            other=describe(node_id, retained),
            waited_s=keepalive_s,
        )


def _payload(message: aiomqtt.Message) -> bytes:
    return bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""


@dataclass
class Takeovers:
    """Counts sessions lost soon after the broker accepted them, with no failed attempt between them.

    That is what a session taken over by another client with the same client id looks like: the broker
    accepts every connection at once and drops it when the other client connects again. A broker that
    restarts or a network that fails shows failed attempts in between, which start the count again.
    """

    short_s: float
    limit: int = TAKEOVER_LIMIT
    _connected_at: float | None = None
    _in_a_row: int = 0
    _spans: list[float] = field(default_factory=list)

    def connected(self, at: float) -> None:
        self._connected_at = at

    def _reset(self) -> None:
        self._in_a_row = 0
        self._spans.clear()

    def ended(self, at: float) -> bool:
        """A connection attempt ended; True when it is the limit-th short session in a row."""
        if self._connected_at is None:  # the broker did not accept it: unreachable, not taken over
            self._reset()
            return False
        span = at - self._connected_at
        self._connected_at = None
        if span >= self.short_s:
            self._reset()
            return False
        self._in_a_row += 1
        self._spans.append(span)
        return self._in_a_row >= self.limit

    def describe(self) -> str:
        spans = ", ".join(f"{s:.1f} s" for s in self._spans)
        return f"{self._in_a_row} sessions in a row were lost soon after they were made ({spans})"

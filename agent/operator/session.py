"""One MQTT connection for one command: subscribe, read what the broker retains, then follow live.

What this connection's QoS 1 subscriptions bring of the retained messages is cut at the broker's
per-client queue: a whole view of what is retained comes from agent/operator/snapshot.py instead.

Retained messages come right after the SUBACK, but MQTT never says when the last one has arrived. The
fence answers that: after subscribing, publish a token on a topic only this client listens to; the broker
queues it behind the retained messages it already queued for us, so once the token is back every
retained message is in. A broker that refuses the fence topic (an ACL), or one that dropped the token
with other packets while our socket was full, costs a bounded wait instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiomqtt

from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.protocol import FleetTopics

QOS = 1  # what the CLI publishes (desired documents, deletions): acknowledged by the broker
# What it subscribes to, and its fence. At QoS 1 a broker serves a subscription at most its per-client
# queue of retained messages, and mosquitto then withholds even the PUBACK of our fence (it wedged `get`
# with 10,000 retained statuses). At QoS 0 it drops only while our socket is full, and nothing waits on
# an acknowledgement meanwhile; on a live TCP connection nothing else is lost.
SUBSCRIBE_QOS = 0
FENCE_TIMEOUT_S = 3.0
FILTERS_PER_PACKET = 100  # exact topics per SUBSCRIBE: few round trips, packets any broker takes


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class _Lost:
    reason: str


class Session:
    def __init__(self, client: aiomqtt.Client, target: Target) -> None:
        self._client = client
        self.target = target
        self.topics = FleetTopics(target.prefix)
        self._fence_topic = self.topics.fence(target.client_id)
        self._queue: asyncio.Queue[Incoming | _Lost] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._filters: list[str] = []

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="operator-reader")
        await self.subscribe(self._fence_topic)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        # aiomqtt has one message iterator per client; this task owns it and hands messages on in order.
        try:
            async for message in self._client.messages:
                if not any(message.topic.matches(f) for f in self._filters):
                    # Not asked for: amqtt 0.12 delivers retained messages that match none of our filters.
                    continue
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                self._queue.put_nowait(Incoming(message.topic.value, bytes(payload), bool(message.retain)))
        except aiomqtt.MqttError as exc:
            self._queue.put_nowait(_Lost(str(exc)))
            return
        self._queue.put_nowait(_Lost("the broker closed the connection"))

    async def subscribe(self, *filters: str) -> None:
        """Subscribe to every filter, waiting for the SUBACKs (many filters go in few packets)."""
        for start in range(0, len(filters), FILTERS_PER_PACKET):
            chunk = filters[start : start + FILTERS_PER_PACKET]
            self._filters.extend(chunk)  # before the SUBACK: retained messages may come first
            await self._client.subscribe([(f, SUBSCRIBE_QOS) for f in chunk])

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1; returns once the broker has acknowledged it."""
        await self._client.publish(topic, payload, qos=QOS, retain=retain)

    async def fence(self, timeout: float = FENCE_TIMEOUT_S) -> list[Incoming]:
        """Everything received up to now, including every retained message of the subscriptions so far."""
        token = uuid.uuid4().hex.encode()
        await self._client.publish(self._fence_topic, token, qos=SUBSCRIBE_QOS)
        collected: list[Incoming] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self._next_any(max(0.0, deadline - loop.time()))
            if message is None:
                return collected  # no echo: the broker refuses the fence topic; retained ones are in by now
            if message.topic == self._fence_topic:
                if message.payload == token:
                    return collected
                continue  # the echo of an earlier fence that timed out
            collected.append(message)

    async def next(self, timeout: float | None = None) -> Incoming | None:
        """The next message, or None once ``timeout`` seconds pass without one (None: wait for ever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            message = await self._next_any(remaining)
            if message is None or message.topic != self._fence_topic:
                return message

    async def _next_any(self, timeout: float | None) -> Incoming | None:
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, _Lost):
            self._queue.put_nowait(item)  # every later read fails the same way
            raise aiomqtt.MqttError(item.reason)
        return item


@asynccontextmanager
async def connect(target: Target) -> AsyncIterator[Session]:
    """A connected session; broker errors become one-line OperatorErrors (exit 1)."""
    client = aiomqtt.Client(**target.settings)
    try:
        await client.__aenter__()
    except (aiomqtt.MqttError, OSError) as exc:
        raise OperatorError(f"cannot reach the broker at {target.address}: {reason(exc)}") from None
    session = Session(client, target)
    try:
        await session.start()
        yield session
    except aiomqtt.MqttError as exc:
        raise OperatorError(f"lost the connection to the broker at {target.address}: {reason(exc)}") from None
    finally:
        await session.close()
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

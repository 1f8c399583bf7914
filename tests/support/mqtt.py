"""An MQTT probe for tests: subscribe, collect everything that arrives, publish, wait for a match.

    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe("nodes/n1/#")
        await probe.publish("nodes/n1/desired", {"rev": 1}, retain=True)
        msg = await probe.wait_for(lambda m: m.topic == "nodes/n1/status" and m.json()["rev"] == 1)

The probe does not reconnect: after ``broker.kill()``/``restart()`` open a new one (a wait on a probe
whose connection is gone fails at once, naming the error, instead of running into its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt

Payload = bytes | str | dict[str, Any] | list[Any]

# A predicate that raises one of these on a message (a non-JSON payload under ``m.json()["k"]``, a
# missing key) simply does not match it.
_NO_MATCH_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True)
class Message:
    """One message the probe received, in arrival order (``index``) with its ``time.monotonic()``."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    time: float
    index: int = field(default=0, compare=False)

    def json(self) -> Any:
        return json.loads(self.payload)

    def text(self) -> str:
        return self.payload.decode()

    def matches(self, topic_filter: str) -> bool:
        """Whether this message's topic matches an MQTT filter (``+`` and ``#`` wildcards)."""
        return aiomqtt.Topic(self.topic).matches(topic_filter)

    def __str__(self) -> str:
        body = self.payload[:200].decode(errors="replace")
        more = "..." if len(self.payload) > 200 else ""
        return f"#{self.index} {self.topic}{' [retained]' if self.retain else ''} q{self.qos}: {body}{more}"


def encode_payload(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


class Probe:
    """A test MQTT client (MQTT 3.1.1, clean session) that records every message it receives."""

    def __init__(self, host: str, port: int, *, identifier: str | None = None, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.identifier = identifier or f"probe-{uuid.uuid4().hex[:12]}"
        self._client = aiomqtt.Client(host, port, identifier=self.identifier, timeout=timeout)
        self._messages: list[Message] = []
        self._cond = asyncio.Condition()
        self._collector: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._filters: list[str] = []

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        self._collector = asyncio.create_task(self._collect(), name=f"{self.identifier}-collector")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _collect(self) -> None:
        try:
            async for m in self._client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                async with self._cond:
                    msg = Message(
                        m.topic.value, payload, bool(m.retain), m.qos, time.monotonic(), len(self._messages)
                    )
                    self._messages.append(msg)
                    self._cond.notify_all()
        except aiomqtt.MqttError as exc:
            async with self._cond:
                self._error = exc
                self._cond.notify_all()

    # ------------------------------------------------------------ actions
    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK (retained messages may arrive right after)."""
        await self._client.subscribe(topic_filter, qos=qos)
        self._filters.append(topic_filter)

    async def publish(self, topic: str, payload: Payload, retain: bool = False, qos: int = 1) -> None:
        """Publish (dicts and lists as JSON); with qos >= 1 this returns once the broker acknowledged."""
        await self._client.publish(topic, encode_payload(payload), qos=qos, retain=retain)

    # ------------------------------------------------------------ reading
    @property
    def messages(self) -> list[Message]:
        """A copy of everything received so far, in arrival order."""
        return list(self._messages)

    def mark(self) -> int:
        """The index the next message will get: pass it as ``after=`` to wait only for newer messages."""
        return len(self._messages)

    def messages_on(self, topic: str) -> list[Message]:
        """Messages whose topic is ``topic`` (or matches it, if it is a filter with wildcards)."""
        return [m for m in self._messages if m.topic == topic or m.matches(topic)]

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        timeout: float = 10.0,
        *,
        after: int = 0,
        what: str = "",
    ) -> Message:
        """The first message (from index ``after`` on, already received ones first) matching ``predicate``.

        Raises AssertionError with the last few messages on timeout, or at once if the connection is lost.
        """
        scanned = after
        found: Message | None = None

        def check() -> bool:
            nonlocal scanned, found
            while scanned < len(self._messages):
                candidate = self._messages[scanned]
                scanned += 1
                try:
                    hit = predicate(candidate)
                except _NO_MATCH_ERRORS:
                    hit = False
                if hit:
                    found = candidate
                    return True
            return self._error is not None

        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(check)
        except TimeoutError:
            raise AssertionError(self._failure(f"timed out after {timeout:.2f}s", what, after)) from None
        if found is None:
            raise AssertionError(self._failure(f"connection lost ({self._error!r})", what, after))
        return found

    async def wait_for_topic(self, topic_filter: str, timeout: float = 10.0, *, after: int = 0) -> Message:
        """The first message on a topic (or matching a filter) from index ``after`` on."""
        return await self.wait_for(lambda m: m.matches(topic_filter), timeout, after=after, what=topic_filter)

    def _failure(self, why: str, what: str, after: int, last: int = 8) -> str:
        tail = self._messages[max(after, len(self._messages) - last) :]
        target = what or "a matching message"
        lines = [
            f"probe {self.identifier} on {self.host}:{self.port}: {why} waiting for {target}",
            f"subscribed to {self._filters}; {len(self._messages)} received, {after} skipped by after=",
        ]
        lines += [f"  {m}" for m in tail] or ["  (none after the mark)"]
        return "\n".join(lines)

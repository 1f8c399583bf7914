"""Resync: the store reconciled against the retained desired documents, whatever the broker's queues cut.

The link's QoS 1 subscription on a persistent session is served at most the broker's per-client queue
(mosquitto: ``max_queued_messages`` 1000, plus 20 in flight): past about a thousand executions a node,
a desired document published while the agent was away, or in a burst, can be dropped before the agent
sees it. So after every connection, and every :data:`INTERVAL_S`, the agent reads the retained desired
documents again in a *pass*: a connection of its own (clean session, client id ``<client id>-resync-
<instance>``, so it takes no session away), the desired filter at QoS 0, at which mosquitto drops only
while its socket to us is full. Each document goes the normal way in (agent/intake.py); generations make
a repeat harmless, so no revision is repeated or skipped.

**When a pass is complete.** MQTT has no end-of-retained signal, and an ACL lets a node publish no topic
it may also read. The fence is a second SUBSCRIBE (to the node's own status, which it may read): mosquitto
queues its SUBACK behind every retained message of the first, so once it is acknowledged they have all
arrived (the same trick as agent/identity.py). A pass of fewer than :data:`SURE_BELOW` documents cannot
have been cut (the queue never filled); a bigger one may have been, and mosquitto then drops the fence's
SUBACK too (it drops every packet while the queue is full), so the pass ends unfenced.

**Absent is not deleted.** A known execution whose document a pass did not bring is looked up once more
by its exact topic (at most one retained message each: those passes cannot be cut); only if it is still
absent behind a fence does the core mark it (:class:`agent.core.events.DesiredMissing`). An execution
the link heard about while a pass ran is left to the link: its news is newer than the pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
import structlog

from agent.core.events import DesiredMissing, Event
from agent.core.model import Execution
from agent.protocol import Topics
from agent.tcp import acknowledge_at_once

log = structlog.get_logger("agent.resync")

INTERVAL_S = 300.0  # slow: a pass of 2000 documents costs the broker and the agent about a second
RETRY_S = 15.0  # after a pass that failed or could not be sure
SURE_BELOW = 1000  # fewer messages than the smallest per-client queue of the common brokers: never cut
FILTERS_PER_PACKET = 100
# Each acknowledgement of a pass may wait this long: not the client's 10 s, which a loop busy with a
# thousand new executions (the very case a resync is for) overruns; only an overflowing broker, which
# drops the acknowledgement, makes a pass wait it out.
ACK_TIMEOUT_S = 60.0
TOPICS_PER_PASS = SURE_BELOW - 1


class Runtime(Protocol):
    executions: dict[str, Execution]

    def submit(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None: ...


@dataclass(frozen=True)
class Pass:
    found: dict[str, bytes]  # topic -> retained payload
    fenced: bool  # the fence came: everything the broker sent before it has arrived

    @property
    def sure(self) -> bool:
        return self.fenced and len(self.found) < SURE_BELOW


class Resync:
    def __init__(
        self,
        *,
        settings: dict[str, Any],
        topics: Topics,
        instance_id: str,
        runtime: Runtime,
        intake: Callable[[str, bytes], None],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._settings = {**settings, "identifier": f"{settings['identifier']}-resync-{instance_id[:8]}"}
        self.topics = topics
        self._runtime = runtime
        self._intake = intake
        self.interval_s = interval_s
        self._due = asyncio.Event()
        self._touched: set[str] | None = None  # executions the link heard about while a pass runs
        self.passes = 0  # completed resyncs, for tests and metrics
        self.log = log.bind(node=topics.node_id)

    def on_message(self, topic: str, payload: bytes) -> None:
        """What the link receives goes through here to intake, so a pass knows what is newer than itself."""
        if self._touched is not None:
            execution_id = self.topics.execution_of_desired(topic)
            if execution_id is not None:
                self._touched.add(execution_id)
        self._intake(topic, payload)

    def connected(self, session_present: bool) -> None:
        self._due.set()

    async def run(self) -> None:
        """Resync after every connection and every ``interval_s``; a failed pass is tried again, never raised."""
        wait = self.interval_s
        while True:
            try:
                async with asyncio.timeout(wait):
                    await self._due.wait()
            except TimeoutError:
                pass
            self._due.clear()
            try:
                sure = await self.resync()
            except aiomqtt.MqttError as exc:
                self.log.warning("cannot read the retained desired documents", error=str(exc))
                sure = False
            wait = self.interval_s if sure else min(RETRY_S, self.interval_s)

    async def resync(self) -> bool:
        """One resync; whether every absence it found was proved (and so marked)."""
        self._touched = set()
        try:
            whole = await read_pass(self._settings, [self.topics.desired_filter], self.topics.node_status)
            found = self._by_execution(whole.found)
            missing = self._missing(found)
            proved = whole.sure
            if missing and not whole.sure:
                exact = [self.topics.desired(e) for e in sorted(missing)]
                looked = await exact_topics(self._settings, exact, self.topics.node_status)
                found |= self._by_execution(looked.found)
                missing = self._missing(found)
                proved = looked.fenced
        finally:
            touched, self._touched = self._touched, None
        for execution_id, payload in found.items():
            if execution_id not in touched:
                self._intake(self.topics.desired(execution_id), payload)
        marked = sorted(missing - touched) if proved else []
        for execution_id in marked:
            self._runtime.submit(execution_id, DesiredMissing())
        self.passes += 1
        self.log.info(
            "resynced with the retained desired documents",
            documents=len(found),
            sure=whole.sure,
            missing=len(marked),
        )
        return whole.sure and (proved or not missing)

    def _by_execution(self, found: dict[str, bytes]) -> dict[str, bytes]:
        by_id = {}
        for topic, payload in found.items():
            execution_id = self.topics.execution_of_desired(topic)
            if execution_id is not None and payload:
                by_id[execution_id] = payload
        return by_id

    def _missing(self, found: Iterable[str]) -> set[str]:
        """Known executions with no retained document among ``found`` (a deletion under way has none)."""
        present = set(found)
        return {
            e.execution_id
            for e in self._runtime.executions.values()
            if e.execution_id not in present and not e.deleting
        }


async def read_pass(settings: dict[str, Any], filters: Sequence[str], fence: str) -> Pass:
    """The retained messages under ``filters`` (which must not overlap ``fence``), at QoS 0."""
    found: dict[str, bytes] = {}
    # The pass reads on the loop that a burst of new executions keeps busy: read what has arrived in one go
    # per readable event (agent/tcp.py), or mosquitto's queue to this connection fills and it drops.
    async with acknowledge_at_once(aiomqtt.Client(**settings, clean_session=True)) as client:
        try:
            for start in range(0, len(filters), FILTERS_PER_PACKET):
                chunk = filters[start : start + FILTERS_PER_PACKET]
                await client.subscribe([(f, 0) for f in chunk], timeout=ACK_TIMEOUT_S)
            await client.subscribe(fence, qos=0, timeout=ACK_TIMEOUT_S)
            fenced = True
        except aiomqtt.MqttError:
            fenced = False  # the broker dropped an acknowledgement: its queue to us was full, so it cut
        messages = client.messages
        for _ in range(len(messages)):  # what arrived before the fence's acknowledgement (or the timeout)
            message = await anext(messages)
            topic = message.topic.value
            if topic != fence and any(message.topic.matches(f) for f in filters):
                found[topic] = (
                    bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                )
    return Pass(found, fenced)


async def exact_topics(settings: dict[str, Any], topics: Sequence[str], fence: str) -> Pass:
    """The retained messages of exact topics (one at most each), in passes too small to be cut."""
    found: dict[str, bytes] = {}
    fenced = True
    for start in range(0, len(topics), TOPICS_PER_PASS):
        result = await read_pass(settings, topics[start : start + TOPICS_PER_PASS], fence)
        found |= result.found
        fenced = fenced and result.fenced
    return Pass(found, fenced)

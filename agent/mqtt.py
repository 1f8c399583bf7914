"""The MQTT edge: one session to the broker, kept up forever, carrying desired documents in and the
outbox out.

Per connection: publish the node as ``online`` (retained; the will says ``offline``), subscribe to this
node's desired topics with QoS 1 on a persistent session, and to its node status, then run three loops
side by side: the receiver turns messages into core events, the publisher drains the outbox in order,
and a refresher republishes the node status every ``keepalive_s / 2`` (proof of life for
agent/identity.py). A lost connection ends them; the session is re-established with capped exponential
backoff and jitter. Another instance ``online`` under this node id, or a session taken over again and
again, ends the link with :class:`IdentityConflict` instead: two agents must not fight over one node.

Owns the broker session. It may not touch the runtime or the store directly: it reads the outbox rows
through :class:`agent.outbox.Rows` and hands each message to a callback (agent/intake.py), unparsed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from agent.client_options import TIMEOUT_S
from agent.identity import (
    REFRESH_FRACTION,
    IdentityConflict,
    Takeovers,
    check_alone,
    conflict_error,
    other_online,
    parse_status,
)
from agent.outbox import Message, Outbox, Rows
from agent.protocol import Topics, dumps
from agent.tcp import acknowledge_at_once, write_at_once
from agent.tls import connect_hint
from agent.window import Acknowledgement, Window

log = structlog.get_logger("agent.mqtt")

# Unacknowledged publishes at once: enough to keep the link busy through a burst, few enough that a lost
# connection resends little. paho and aiomqtt are told the same (their defaults: 20 and a warning at 10).
PUBLISH_WINDOW = 64
NODE_STATUS_GAP_S = 0.2
NODE_STATUS_MAX_LAG_S = 1.0
PUBLISH_TIMEOUT_S = TIMEOUT_S
LOG_REPLIES_IN_FLIGHT = 8  # log replies unacknowledged at once: few, so statuses keep the window
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 15.0


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping what it drops: whether the broker still had our session (CONNACK).

    aiomqtt 2.x (pinned) takes the CONNACK in ``_on_connect`` and throws its flags away; this override is
    the one place that reads them, and (:meth:`arrived`) the one that reads its queue of messages.
    """

    session_present: bool = False

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def arrived(self) -> list[aiomqtt.Message]:
        """The messages queued already, taken without waiting: aiomqtt hands them over one per turn of
        the event loop (a task and a wait each), so a burst read in one go (agent/tcp.py) would reach
        the runtime a document or two at a time, each decided and committed on its own."""
        queue = self._queue
        return [queue.get_nowait() for _ in range(queue.qsize())]


class MqttLink:
    def __init__(
        self,
        *,
        settings: dict[str, Any],
        topics: Topics,
        store: Rows,
        outbox: Outbox,
        node_status: Callable[[str], dict[str, Any]],
        on_message: Callable[[str, bytes], None],
        log_replies: asyncio.Queue[Message] | None = None,
        instance_id: str,
    ) -> None:
        self._settings = settings
        self._instance_id = instance_id
        self._refresh_s = float(settings["keepalive"]) * REFRESH_FRACTION
        # Another client with our client id takes the session over within its reconnect backoff.
        self._takeovers = Takeovers(short_s=BACKOFF_MAX_S + TIMEOUT_S)
        self.topics = topics
        self._store = store
        self._outbox = outbox
        self._node_status = node_status
        self._on_message = on_message
        self._log_replies = log_replies  # agent/log_service.py fills it; bounded there
        self._client: aiomqtt.Client | None = None
        # Called with what was just acknowledged by the broker (metrics); must be quick and not raise.
        self.on_published: list[Callable[[list[Message]], None]] = []
        self._status_dirty_since: float | None = None  # loop time the node status was first seen dirty
        # Called on every connection, once subscribed, with whether the broker still had our session
        # (CONNACK session present); before anything is published on it. Quick, and must not raise.
        self.on_connect: list[Callable[[bool], None]] = []
        self._status_sent_at = float("-inf")  # loop time of the latest node status sent
        self._status_wake_at = float("-inf")  # loop time the publisher is woken for a node status
        self._closing = False  # once set, nothing may publish `online` again: `offline` is the last word
        self.checked = asyncio.Event()  # no other agent acts for this node id (agent/identity.py)
        self.connected = asyncio.Event()
        self.first_attempt = asyncio.Event()  # the first connection attempt has been made (either way)
        self.log = log.bind(node=topics.node_id)

    def _new_client(self) -> _Client:
        will = aiomqtt.Will(self.topics.node_status, dumps(self._node_status("offline")), qos=1, retain=True)
        client = _Client(
            **self._settings, will=will, clean_session=False, max_inflight_messages=PUBLISH_WINDOW
        )
        # aiomqtt logs "There are N pending publish calls" for each publish past its threshold (10): a
        # full window is the design here, not a sign of trouble. Subscribes add at most two, log replies
        # their own few.
        client.pending_calls_threshold = PUBLISH_WINDOW + 2 + LOG_REPLIES_IN_FLIGHT
        acknowledge_at_once(client)  # the same client, its socket rearmed
        write_at_once(client)  # and what it queues written in the same loop turn
        return client

    async def run(self) -> None:
        """Check that this agent is alone, then stay connected forever; each broker outage is logged once
        per attempt, never raised."""
        keepalive_s = float(self._settings["keepalive"])
        await check_alone(
            self._settings, self.topics.node_status, self.topics.node_id, self._instance_id, keepalive_s
        )
        self.checked.set()
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(aiomqtt.MqttError),
                wait=wait_random_exponential(multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S),  # full jitter
                before_sleep=self._log_retry,
            )
            async for attempt in retrying:
                with attempt:
                    await self._session()

    def _log_retry(self, state: RetryCallState) -> None:
        self.first_attempt.set()
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        hint = connect_hint(error) if error is not None else None
        self.log.warning(
            "broker unreachable",
            attempt=state.attempt_number,
            error=str(error),
            retry_in_s=round(wait, 2),
            **({"hint": hint} if hint else {}),
        )

    async def _session(self) -> None:
        """One connection. Returns when an established connection is lost, so backoff starts afresh."""
        try:
            await self._connected_session()
        except aiomqtt.MqttError:
            self._count_takeover()
            raise
        self._count_takeover()

    def _count_takeover(self) -> None:
        if self._takeovers.ended(asyncio.get_running_loop().time()):
            raise IdentityConflict(
                f"{self._takeovers.describe()}: another client connects with this agent's client id "
                f"{self._settings['identifier']!r} (another agent with this node id, or a copied "
                "configuration). Stopping instead of fighting over the session: give each agent its own "
                "node_id (or mqtt.client_id)."
            )

    async def _connected_session(self) -> None:
        async with self._new_client() as client:
            self._takeovers.connected(asyncio.get_running_loop().time())  # CONNACK: the broker took us
            self._client = client
            lost: BaseException | None = None
            try:
                await client.publish(
                    self.topics.node_status, dumps(self._node_status("online")), qos=1, retain=True
                )
                # Control first: its retained document then comes before the desired ones, so a cordon
                # set while the agent was away applies to the documents that arrived meanwhile.
                await self._subscribe_control(client)
                await client.subscribe(self.topics.desired_filter, qos=1)
                await client.subscribe(self.topics.node_status, qos=1)
                if self._log_replies is not None:
                    await self._subscribe_or_warn(
                        client, self.topics.log_requests, "log requests cannot reach the agent"
                    )
                self.connected.set()
                self.first_attempt.set()
                self.log.info(
                    "connected", subscribed=self.topics.desired_filter, session_present=client.session_present
                )
                for observer in self.on_connect:
                    observer(client.session_present)
                async with asyncio.TaskGroup() as loops:
                    loops.create_task(self._receive(client), name="mqtt-receive")
                    loops.create_task(self._publish(client), name="mqtt-publish")
                    loops.create_task(self._refresh(), name="mqtt-refresh")
                    if self._log_replies is not None:
                        loops.create_task(
                            self._reply_logs(client, self._log_replies), name="mqtt-log-replies"
                        )
            except* aiomqtt.MqttError as group:
                lost = group.exceptions[0]
            finally:
                established = self.connected.is_set()
                self.connected.clear()
                self._outbox.idle.clear()
                self._client = None
            if not established and lost is not None:
                raise lost  # connect-time refusal (subscribe denied, ...): retry with backoff
            self.log.warning("connection lost", error=str(lost))

    async def _subscribe_control(self, client: aiomqtt.Client) -> None:
        await self._subscribe_or_warn(client, self.topics.control, "cordon documents cannot reach the agent")

    async def _subscribe_or_warn(self, client: aiomqtt.Client, topic: str, consequence: str) -> None:
        granted = await client.subscribe(topic, qos=1)
        if any(_refused(code) for code in (granted or ())):
            # An ACL from before this topic: run on (desired documents matter more) but say so loudly.
            self.log.error(
                f"the broker refuses one of this node's topics: {consequence}; "
                "update the broker's ACL (config/mosquitto/acl, docs/security.md)",
                topic=topic,
            )

    async def _reply_logs(self, client: aiomqtt.Client, replies: asyncio.Queue[Message]) -> None:
        """Log replies (agent/log_service.py): QoS 1, not retained, up to LOG_REPLIES_IN_FLIGHT
        unacknowledged. paho sends them in the order they are handed over, so each request's replies stay
        in order. What waits while the link is down stays in the log service's bounded queue."""
        in_flight = asyncio.Semaphore(LOG_REPLIES_IN_FLIGHT)
        async with asyncio.TaskGroup() as flights:
            while True:
                message = await replies.get()
                await in_flight.acquire()
                flights.create_task(self._send_releasing(client, message, in_flight))

    async def _send_releasing(
        self, client: aiomqtt.Client, message: Message, slot: asyncio.Semaphore
    ) -> None:
        try:
            await self._send(client, message)
        finally:
            slot.release()

    async def _receive(self, client: _Client) -> None:
        async for first in client.messages:
            for message in (first, *client.arrived()):  # in the order they came
                self._take(message)
        raise aiomqtt.MqttError("the message stream ended")

    def _take(self, message: aiomqtt.Message) -> None:
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        if message.topic.value == self.topics.node_status:
            self._watch_node_status(payload, retained=bool(message.retain))
        else:
            self._on_message(message.topic.value, payload)

    def _watch_node_status(self, payload: bytes, retained: bool) -> None:
        """A live document of another instance under our node id: it is acting for this node right now.

        A retained one is only history (the check at start judged it, and our own `online` replaces it).
        """
        document = parse_status(payload)
        if not retained and other_online(document, self._instance_id):
            assert document is not None
            raise conflict_error(self.topics.node_id, document, "and published its node status just now")

    async def _refresh(self) -> None:
        """Republish the node status now and then, so another agent can tell a live one from a stale one."""
        while True:
            await asyncio.sleep(self._refresh_s)
            self._outbox.changed(node_status=True)

    async def _publish(self, client: aiomqtt.Client) -> None:
        """The single writer of everything this node publishes: outbox rows in order, with up to
        PUBLISH_WINDOW unacknowledged (agent/window.py), and the node status once the rows are out. A
        publish unacknowledged for PUBLISH_TIMEOUT_S ends the connection (its rows go again on the next)."""
        try:
            window = Window(PUBLISH_WINDOW, PUBLISH_TIMEOUT_S)
            while True:
                self._outbox.wake.clear()
                self._land(window)
                self._fill(client, window)
                if window.empty:
                    self._outbox.idle.set()
                await self._woken(window.deadline)
        except BaseException:
            self._outbox.node_status_dirty = True  # the node status may not have gone out
            raise

    async def _woken(self, deadline: float | None) -> None:
        """Wait for new rows or a landing; by ``deadline`` (loop time) at the latest, or fail."""
        if deadline is None:
            await self._outbox.wake.wait()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._outbox.wake.wait()
        except TimeoutError:
            raise aiomqtt.MqttError(
                f"the broker acknowledged no publish for {PUBLISH_TIMEOUT_S:.0f} s"
            ) from None

    def _land(self, window: Window) -> None:
        upto, messages = window.landed()
        if upto is not None:
            self._store.acknowledge(upto, now=window.empty)  # through a burst, deleted in bulk
        elif window.empty:
            self._store.acknowledge(
                0
            )  # emptied by a publish that is no row (the node status): delete the rest
        if messages:
            for observer in self.on_published:
                observer(messages)

    def _fill(self, client: aiomqtt.Client, window: Window) -> None:
        room = window.room
        rows = self._store.pending(room, after=window.last_seq) if room > 0 else []
        now = asyncio.get_running_loop().time()
        for row in rows:
            window.send(row.seq, row.message, self._start_publish(client, row.message), now)
        # One node status may go past a full window (paho holds it until a slot frees, then sends it
        # before the rows after it): through a backlog that never lets the window empty, on a slow broker,
        # it must still go out every NODE_STATUS_MAX_LAG_S, not wait for the backlog's end.
        due = window.room > 0 or not window.unsequenced
        if self._outbox.node_status_dirty and not self._closing and due:
            self._node_status_if_due(client, window, caught_up=len(rows) < room)

    def _node_status_if_due(self, client: aiomqtt.Client, window: Window, *, caught_up: bool) -> None:
        """The node status, after the rows, not among them: its counts then follow the statuses a reader
        has seen, and it counts every execution, so through a burst it goes once the rows are out and at
        most every NODE_STATUS_GAP_S; a backlog that never empties still lets it out every
        NODE_STATUS_MAX_LAG_S (it is also our proof of life)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._status_dirty_since is None:
            self._status_dirty_since = now
        next_at = self._status_sent_at + NODE_STATUS_GAP_S
        if now - self._status_dirty_since < NODE_STATUS_MAX_LAG_S and (not caught_up or now < next_at):
            if caught_up and self._status_wake_at < next_at:  # nothing else may wake the publisher
                self._status_wake_at = next_at
                loop.call_at(next_at, self._outbox.wake.set)
            return
        self._outbox.node_status_dirty = False
        self._status_dirty_since = None
        self._status_sent_at = now
        status = Message(self.topics.node_status, dumps(self._node_status("online")), retain=True)
        window.send(None, status, self._start_publish(client, status), now)

    def _start_publish(self, client: aiomqtt.Client, message: Message) -> Acknowledgement:
        """Hand ``message`` to paho now (QoS 1); what its PUBACK sets.

        Not aiomqtt's ``publish()``: each call of it makes a task, an event, a timeout and two passes over
        every pending call, a large share of the event loop's time through a burst of thousands of
        statuses, and the window needs one timer for all of them. This fills the same table aiomqtt's
        ``on_publish`` empties (aiomqtt 2.x, pinned), so the PUBACK is matched as before."""
        acknowledged = Acknowledgement(self._outbox.wake)
        info = client._client.publish(message.topic, message.payload, qos=1, retain=message.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if info.is_published():  # acknowledged already: never, as the PUBACK is read on a later turn
            acknowledged.set()
        else:
            client._pending_publishes[info.mid] = acknowledged
        return acknowledged

    @staticmethod
    async def _send(client: aiomqtt.Client, message: Message) -> None:
        await client.publish(
            message.topic, message.payload, qos=1, retain=message.retain, timeout=PUBLISH_TIMEOUT_S
        )

    async def drain(self, timeout: float = 2.0) -> None:
        """On a clean shutdown: give what is queued a moment to go out, so it is not sent twice later."""
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._outbox.idle.wait()

    async def say_offline(self, timeout: float = 2.0) -> None:
        """On a clean shutdown: publish ``offline`` ourselves, as the will would on a crash."""
        self._closing = True
        client = self._client
        if client is None:
            return
        try:
            await client.publish(
                self.topics.node_status,
                dumps(self._node_status("offline")),
                qos=1,
                retain=True,
                timeout=timeout,
            )
        except aiomqtt.MqttError as exc:
            self.log.warning("could not publish offline", error=str(exc))


def _refused(code: object) -> bool:
    """A SUBACK return code that refuses the subscription: 0x80 in MQTT 3.1.1, >= 0x80 in MQTT 5."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80

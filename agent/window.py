"""Publishes in flight: a sliding window of QoS 1 publishes, landed in the order they were sent.

The publisher used to send a batch and wait for every PUBACK of it before sending the next: one slow
acknowledgement (a broker with Nagle on holds back the second PUBACK of a batch until our TCP ACK)
stalled every status behind it. Here up to ``size`` publishes are unacknowledged at once and a new one
is sent as soon as there is room; what has landed is reported as the longest acknowledged prefix, so
the outbox row of a message is acknowledged only once its own PUBACK and those of every earlier row
have come. paho writes them to the one TCP connection in the order they are started, so order per
topic (and overall) is the outbox's order; after a lost connection the rows not yet acknowledged are
sent again, in order, as exact copies.

A flight is an :class:`Acknowledgement` the client sets when the PUBACK comes, not a task awaiting
aiomqtt's ``publish()``: one timer for the whole window (its oldest flight's deadline) replaces a task,
a timeout and an event per publish, which through a burst of thousands of statuses was a large share of
the event loop's time (agent/mqtt.py, ``_start_publish``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from agent.outbox import Message


class Acknowledgement(asyncio.Event):
    """Set once the broker has acknowledged one publish; setting it wakes the publisher.

    An ``asyncio.Event``, as the client's table of pending publishes holds (aiomqtt calls ``set()`` on
    the PUBACK)."""

    def __init__(self, wake: asyncio.Event) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()


@dataclass(frozen=True)
class Flight:
    seq: int | None  # its outbox row; None for what is not in the outbox (the node status)
    message: Message
    acknowledged: asyncio.Event
    deadline: float  # loop time by which its PUBACK must have come


class Window:
    """Publishes sent and not yet landed, oldest first."""

    def __init__(self, size: int, timeout_s: float) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self._in_flight: deque[Flight] = deque()
        self.last_seq: int | None = None  # the highest outbox row sent on this connection
        self.unsequenced = 0  # flights that are no outbox row (the node status)

    @property
    def room(self) -> int:
        return self.size - len(self._in_flight)

    @property
    def empty(self) -> bool:
        return not self._in_flight

    @property
    def deadline(self) -> float | None:
        """When the oldest publish not landed must have been acknowledged (None: nothing in flight).

        After :meth:`landed` the oldest is unacknowledged, and it was sent first, so its deadline is the
        earliest: one timer watches them all."""
        return self._in_flight[0].deadline if self._in_flight else None

    def send(self, seq: int | None, message: Message, acknowledged: asyncio.Event, now: float) -> None:
        """Record ``message``, just handed to the client at loop time ``now``, as in flight."""
        self._in_flight.append(Flight(seq, message, acknowledged, now + self.timeout_s))
        if seq is None:
            self.unsequenced += 1
        else:
            self.last_seq = seq

    def landed(self) -> tuple[int | None, list[Message]]:
        """The acknowledged prefix, taken out of the window: its highest outbox row, and its messages."""
        upto: int | None = None
        messages: list[Message] = []
        while self._in_flight and self._in_flight[0].acknowledged.is_set():
            flight = self._in_flight.popleft()
            messages.append(flight.message)
            if flight.seq is None:
                self.unsequenced -= 1
            else:
                upto = flight.seq
        return upto, messages

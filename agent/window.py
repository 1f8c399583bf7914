"""Publishes in flight: a sliding window of QoS 1 publishes, landed in the order they were sent.

The publisher used to send a batch and wait for every PUBACK of it before sending the next: one slow
acknowledgement (a broker with Nagle on holds back the second PUBACK of a batch until our TCP ACK)
stalled every status behind it. Here up to ``size`` publishes are unacknowledged at once and a new one
is sent as soon as there is room; what has landed is reported as the longest acknowledged prefix, so
the outbox row of a message is acknowledged only once its own PUBACK and those of every earlier row
have come. paho writes them to the one TCP connection in the order they are started, so order per
topic (and overall) is the outbox's order; after a lost connection the rows not yet acknowledged are
sent again, in order, as exact copies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass

from agent.outbox import Message


@dataclass(frozen=True)
class Flight:
    seq: int | None  # its outbox row; None for what is not in the outbox (the node status)
    message: Message
    task: asyncio.Task[None]


class Window:
    """Publishes started into a TaskGroup (a failed one ends the group, and so the connection).

    ``wake`` is set whenever one lands, so the publisher's single wait covers new rows and landings.
    """

    def __init__(self, size: int, flights: asyncio.TaskGroup, wake: asyncio.Event) -> None:
        self.size = size
        self._flights = flights
        self._wake = wake
        self._in_flight: deque[Flight] = deque()
        self.last_seq: int | None = None  # the highest outbox row sent on this connection

    @property
    def room(self) -> int:
        return self.size - len(self._in_flight)

    @property
    def empty(self) -> bool:
        return not self._in_flight

    def send(self, seq: int | None, message: Message, publish: Awaitable[None]) -> None:
        """Start ``publish`` (the publish of ``message``) now: its first step hands it to paho in order."""
        task = self._flights.create_task(_awaited(publish), name=f"publish:{seq}")
        task.add_done_callback(lambda _: self._wake.set())
        self._in_flight.append(Flight(seq, message, task))
        if seq is not None:
            self.last_seq = seq

    def landed(self) -> tuple[int | None, list[Message]]:
        """The acknowledged prefix, taken out of the window: its highest outbox row, and its messages."""
        upto: int | None = None
        messages: list[Message] = []
        while self._in_flight and _acknowledged(self._in_flight[0].task):
            flight = self._in_flight.popleft()
            messages.append(flight.message)
            if flight.seq is not None:
                upto = flight.seq
        return upto, messages


def _acknowledged(task: asyncio.Task[None]) -> bool:
    # A cancelled or failed publish ends the window's TaskGroup, so this is belt and braces.
    return task.done() and not task.cancelled() and task.exception() is None


async def _awaited(publish: Awaitable[None]) -> None:
    await publish

"""The outbox: what waits to be published (its rows) and the flag that wakes the publisher.

The runtime fills it (through the store, in the transaction of each decision) and the MQTT link drains
it; this module is what the two share, so neither imports the other. It holds no rows itself (they are
durable in agent/store.py) and touches no I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Message:
    """One MQTT message waiting in the outbox."""

    topic: str
    payload: bytes
    retain: bool
    # On the first status answering a desired document: the wall time it was decided, so what the broker
    # acknowledges tells the desired-to-status latency (agent/metrics.py) without reading the payload. In
    # memory only (agent/store.py keeps it beside the row, not in it): a lost figure after a restart costs
    # less than a schema change. Not part of what a message is on the wire, so not compared.
    decided_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Queued:
    seq: int
    message: Message


@dataclass
class Outbox:
    """The wake-up side of the outbox: a flag the publisher waits on, set once however many changes."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set by the publisher: all queued is out
    node_status_dirty: bool = True

    def changed(self, node_status: bool = False) -> None:
        self.node_status_dirty = self.node_status_dirty or node_status
        self.idle.clear()
        self.wake.set()


class Rows(Protocol):
    """The durable rows of the outbox as the publisher reads them (agent/store.py keeps them)."""

    def pending(self, limit: int, after: int | None = None) -> list[Queued]: ...

    def acknowledge(self, upto_seq: int, *, now: bool = True) -> None: ...

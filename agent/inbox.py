"""The runtime's inbox: the one queue of events waiting for a decision, in the order they came.

Everything that reports to the runtime (intake, effects, probes, timers, mail between executions) puts
its event here; only the runtime takes them out, so there is one writer per execution. Holds events,
nothing else: no store, no decisions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agent.control import ControlParsed
from agent.core.events import Event


@dataclass(frozen=True)
class Delivery:
    execution_id: str
    event: Event
    mail_seq: int | None = None  # its row in the durable mailbox, when it is mail between executions


@dataclass(frozen=True)
class ControlDelivery:
    """A node control document (cordon): the node's, not one execution's, and ordered with the rest."""

    parsed: ControlParsed


class Inbox:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Delivery | ControlDelivery] = asyncio.Queue()

    def submit(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None:
        """Queue an event; safe from any callback on the loop. ``mail_seq``: its row in the mailbox."""
        self._queue.put_nowait(Delivery(execution_id, event, mail_seq))

    def submit_control(self, parsed: ControlParsed) -> None:
        # The same queue as desired documents: a cordon applies from the document after it, in order.
        self._queue.put_nowait(ControlDelivery(parsed))

    async def get(self) -> Delivery | ControlDelivery:
        return await self._queue.get()

    async def next_group(self, limit: int) -> list[Delivery | ControlDelivery]:
        """The next event (waiting for one) and those queued behind it, ``limit`` at most, in order."""
        group: list[Delivery | ControlDelivery] = [await self._queue.get()]
        while len(group) < limit and not self._queue.empty():
            group.append(self._queue.get_nowait())
        return group

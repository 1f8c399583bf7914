"""The agent's clocks as the runtime reads them: the wall clock, and the boot clock on the loop's timers.

Owns reading time for the runtime (:class:`Clock`); the core gets it as a :class:`agent.core.clock.Now`
and never reads a clock itself. Touches nothing else: no store, no MQTT, no processes.
"""

from __future__ import annotations

import asyncio
import time

from agent.boot import boot_time
from agent.core.clock import Now


class Clock:
    """The runtime's two clocks (agent/core/clock.py): the wall clock as it reads, and the boot clock.

    The boot clock is read off the event loop's monotonic clock, anchored to CLOCK_BOOTTIME once, so the
    core's deadlines and the loop's timers (``loop.call_at``) are the same clock: a step of the wall
    clock moves neither. Published times read the wall clock afresh, so they follow a corrected clock.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._anchor = boot_time() - loop.time()

    def now(self) -> float:
        return time.time()

    def boot(self) -> float:
        return self._anchor + self._loop.time()

    def moment(self) -> Now:
        return Now(wall=self.now(), boot=self.boot())

    def loop_time(self, boot: float) -> float:
        return boot - self._anchor

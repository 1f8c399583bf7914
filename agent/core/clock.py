"""The moment of a decision, on the two clocks the core needs: one to publish, one to measure.

The wall clock says what time it is to the rest of the world (``updated_at``, ``stable_at``,
``next_restart_at``) but it can be stepped at any time (NTP on a board without a real-time clock, a VM
resumed after days). Timers must measure real elapsed time, so they are deadlines on the boot clock
(seconds since boot, the kernel's CLOCK_BOOTTIME, which counts suspended time too and is never stepped),
the clock process start times are read on as well. Deadlines of an earlier boot mean nothing: the store
drops them after a reboot (agent/core/reboot.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Now:
    wall: float  # epoch seconds: for what is published
    boot: float  # seconds since boot: for deadlines

    def wall_of(self, boot: float) -> float:
        """The wall-clock time a boot-clock deadline will fall at, as the wall clock reads now."""
        return self.wall + (boot - self.boot)

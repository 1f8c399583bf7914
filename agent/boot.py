"""This boot of the machine: its id and the kernel's boot clock, the reference for every stored deadline.

CLOCK_BOOTTIME counts real time since boot, suspended time included, and nothing steps it; the boot id
changes at every boot, so a deadline stored with it is never read against another boot's clock.
"""

from __future__ import annotations

import time
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def boot_time() -> float:
    """Seconds since boot."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)

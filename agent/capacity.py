"""The node's capacity for the node status: cpus, memory, free space on the state directory's disk.

Read with psutil. The published figures change only when one of them has moved by more than 5 % from
what was published (PROTOCOL.md, Node status document), so a disk that fills by a few bytes a second
does not make a new node status every time it is sampled; the sample is taken every ``SAMPLE_S``, well
inside the contract's 60 s.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger("agent.capacity")

SAMPLE_S = 20.0
DRIFT = 0.05


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory_bytes: int
    state_disk_free_bytes: int

    def document(self) -> dict[str, int]:
        return asdict(self)


def measure(state_dir: Path) -> Capacity:
    """What this node has now: the cpus this process may run on (its affinity, as a container or a
    cpuset sees it), total memory, and the free bytes of ``state_dir``'s file system for an unprivileged
    writer (what the workloads' logs and results can use)."""
    try:
        cpus = len(psutil.Process().cpu_affinity() or [])
    except (AttributeError, psutil.Error):  # no affinity on this platform
        cpus = 0
    return Capacity(
        cpus=cpus or os.cpu_count() or 1,
        memory_bytes=int(psutil.virtual_memory().total),
        state_disk_free_bytes=int(psutil.disk_usage(str(state_dir)).free),
    )


def drifted(published: Capacity, fresh: Capacity, fraction: float = DRIFT) -> bool:
    """Whether any figure of ``fresh`` differs from ``published`` by more than ``fraction`` of it."""
    for old, new in zip(asdict(published).values(), asdict(fresh).values(), strict=True):
        if abs(new - old) > fraction * abs(old) or (old == 0 and new != 0):
            return True
    return False


class CapacityWatch:
    """Holds the published capacity and replaces it when the node's has drifted (``changed`` is called)."""

    def __init__(self, sample: Callable[[], Capacity], changed: Callable[[], None]) -> None:
        self._sample = sample
        self._changed = changed
        self.current = sample()

    async def run(self, every_s: float = SAMPLE_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                # Off the loop: statvfs of a state directory on a slow or network disk can take a while.
                fresh = await asyncio.to_thread(self._sample)
            except OSError as exc:  # the figures stay what they were; the next sample may work
                log.warning("cannot measure the node's capacity", error=str(exc))
                continue
            if drifted(self.current, fresh):
                self.current = fresh
                self._changed()

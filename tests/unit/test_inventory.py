"""Node inventory without I/O: capacity drift, its watch, and the ``nodes`` table's tolerant reading."""

from __future__ import annotations

import asyncio

from agent.capacity import Capacity, CapacityWatch, drifted
from agent.operator.nodes import node_rows, size_text
from tests.support.wait import wait_until

GIB = 1024**3
BASE = Capacity(cpus=4, memory_bytes=8 * GIB, state_disk_free_bytes=100 * GIB)


def test_small_changes_are_not_a_drift_and_large_ones_are() -> None:
    assert not drifted(BASE, BASE)
    assert not drifted(BASE, Capacity(4, 8 * GIB, 96 * GIB))  # 4 %
    assert drifted(BASE, Capacity(4, 8 * GIB, 94 * GIB))  # 6 %
    assert drifted(BASE, Capacity(4, 8 * GIB, 106 * GIB))
    assert drifted(BASE, Capacity(2, 8 * GIB, 100 * GIB))
    assert drifted(Capacity(4, 8 * GIB, 0), Capacity(4, 8 * GIB, 1))  # a full disk with space again


async def test_the_watch_publishes_a_drift_and_not_the_small_changes() -> None:
    samples = [Capacity(4, 8 * GIB, 100 * GIB - i) for i in range(50)] + [Capacity(4, 8 * GIB, 50 * GIB)]
    taken: list[Capacity] = []
    changes: list[Capacity] = []

    def sample() -> Capacity:
        taken.append(samples[min(len(taken), len(samples) - 1)])
        return taken[-1]

    watch = CapacityWatch(sample, lambda: changes.append(watch.current))
    task = asyncio.create_task(watch.run(every_s=0.001))
    try:
        await wait_until(lambda: changes, timeout=10, what="the drift reported")
    finally:
        task.cancel()
    assert len(taken) >= len(samples)
    assert changes[0] == Capacity(4, 8 * GIB, 50 * GIB), "the small changes before it were not"
    assert watch.current == changes[0]


def test_sizes_read_as_kubectl_shows_them() -> None:
    assert [size_text(v) for v in (0, 1023, 1536, 20 * 1024**2, 8 * GIB, 3 * 1024**5)] == [
        "0",
        "1023",
        "1.5Ki",
        "20Mi",
        "8.0Gi",
        "3072Ti",
    ]
    assert size_text("7") == size_text(-1) == size_text(True) == "?"


def test_a_node_status_of_the_wrong_shape_shows_dashes() -> None:
    rows = node_rows(
        {"n": {"state": "online", "labels": "x", "executions": [], "capacity": 3, "cordoned": "yes"}}
    )
    assert rows == [["n", "online", "-", "-", "-", "-", "-"]]
    full = {
        "state": "online",
        "agent_version": "0.1.0",
        "labels": {"zone": "a", "gpu": ""},
        "executions": {"failed": 1, "running": 2, "zzz": 1},
        "max_executions": 3,
        "capacity": {"cpus": 2, "memory_bytes": 8 * GIB, "state_disk_free_bytes": 40 * GIB},
        "cordoned": True,
    }
    assert node_rows({"m": full}) == [
        [
            "m",
            "online",
            "0.1.0",
            "gpu,zone=a",
            "running=2,failed=1,zzz=1 (max 3)",
            "2 cpu, 8.0Gi mem, 40Gi disk free",
            "yes",
        ]
    ]

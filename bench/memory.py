"""The memory one remembered, never-accepted (rejected) execution costs the agent.

    .venv/bin/python -m bench.memory [--count 20000] [--json]

Drives the real runtime (``agent.runtime.Runtime.apply`` with a real SQLite store, in a temporary state
directory on /dev/shm when it exists, so fsync does not dominate) with ``--count`` rejected desired
documents, each for a new execution id, as the daemon makes them: ``parse_desired`` of a payload with an
empty ``spec.command``, then ``to_event``. Before and after, it measures the Python heap the process holds
(tracemalloc, after a full collection) and the resident set size (psutil). The figures are the growth
divided by the count: bytes per remembered execution. The baseline, measured in the same run, is the same
number of documents for one execution id (each one a new rejection of the same execution), which grows
nothing but the store on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.executors.process import ProcessExecutor  # noqa: E402
from agent.intake import to_event  # noqa: E402
from agent.log import configure_logging  # noqa: E402
from agent.protocol import Topics, parse_desired  # noqa: E402
from agent.results.publishers import Publishers  # noqa: E402
from agent.store import Store  # noqa: E402
from tests.support.runtime import standalone_runtime  # noqa: E402

NODE = "bench-node"
MAX_PAYLOAD = 262144


def bad_payload(execution_id: str, generation: int) -> bytes:
    document = {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": "running"},
        "spec": {"command": []},
    }
    return json.dumps(document).encode()


def heap_and_rss() -> tuple[int, int]:
    gc.collect()
    return tracemalloc.get_traced_memory()[0], psutil.Process().memory_info().rss


SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


async def growth(count: int, distinct: bool) -> tuple[float, float]:
    """Heap and RSS growth per rejected document, each for a new execution id or all for one."""
    base = SCRATCH
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=base) as tmp:
        store = Store(Path(tmp) / "agent.db", NODE)
        runtime = standalone_runtime(
            store,
            ProcessExecutor(Path(tmp)),
            Topics("reconcile/v1", NODE),
            Publishers.local_only(Path(tmp) / "results"),
        )
        heap0, rss0 = heap_and_rss()
        for i in range(count):
            execution_id = f"x{i}" if distinct else "x"
            payload = bad_payload(execution_id, i + 1)
            runtime.apply(execution_id, to_event(parse_desired(execution_id, payload, MAX_PAYLOAD)))
        heap1, rss1 = heap_and_rss()
        store.close()
        runtime.executor.release()  # its (empty) cgroup directory, where it made one
    return (heap1 - heap0) / count, (rss1 - rss0) / count


async def measure(count: int) -> dict[str, float]:
    tracemalloc.start()
    await growth(min(count, 500), distinct=True)  # warm up: imports, caches, pydantic's validators
    heap, rss = await growth(count, distinct=True)
    base_heap, base_rss = await growth(count, distinct=False)
    return {
        "count": count,
        "heap_bytes_per_execution": heap,
        "rss_bytes_per_execution": rss,
        "baseline_heap_bytes_per_document": base_heap,
        "baseline_rss_bytes_per_document": base_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging("json", "warning")
    figures = asyncio.run(measure(args.count))
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.count} rejected documents, each for a new execution id (never accepted)")
    print(
        f"per remembered execution   heap {figures['heap_bytes_per_execution']:.0f} B   "
        f"RSS {figures['rss_bytes_per_execution']:.0f} B"
    )
    print(
        f"baseline: as many rejections of one execution   heap {figures['baseline_heap_bytes_per_document']:.0f} B"
        f"   RSS {figures['baseline_rss_bytes_per_document']:.0f} B per document"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

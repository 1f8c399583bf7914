"""The cost of containment at spawn: ProcessExecutor.spawn with a cgroup per attempt vs process groups.

    .venv/bin/python -m bench.containment [--samples 40] [--json]

Each sample spawns ``sleep 600`` through the supervisor and times ``spawn()`` (cgroup creation, the
``cgroup-N`` file, the supervisor reporting the workload's pid), then kills the workload and waits until it
is gone (and, with a cgroup, removed). Both modes alternate in one run on one machine; the process-group
figure is the baseline. Exit status 0 whatever the ratio; skips the cgroup side where none can be made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.executors.cgroups import Containment  # noqa: E402
from agent.executors.process import ProcessExecutor  # noqa: E402
from agent.protocol import Spec  # noqa: E402
from tests.support.leftovers import remove_cgroups  # noqa: E402

SPEC = Spec(command=["sleep", "600"])


async def sample(executor: ProcessExecutor, attempt: int) -> float:
    began = time.perf_counter()
    ref = await executor.spawn("bench", attempt, SPEC)
    took = time.perf_counter() - began
    executor.signal(ref, "SIGKILL")
    await executor.wait(ref)
    await executor.clear(ref, lambda: True)
    return took


async def run(samples: int, state_dir: Path) -> dict[str, float]:
    contained = ProcessExecutor(state_dir / "cgroup")
    grouped = ProcessExecutor(state_dir / "group", Containment(kind="process-group", reason="baseline"))
    if contained.containment.kind != "cgroup":
        print(f"no cgroups here ({contained.containment.reason}): nothing to compare", file=sys.stderr)
        return {}
    times: dict[str, list[float]] = {"cgroup": [], "process-group": []}
    try:
        for attempt in range(1, samples + 1):
            times["cgroup"].append(await sample(contained, attempt))
            times["process-group"].append(await sample(grouped, attempt))
    finally:
        remove_cgroups(state_dir / "cgroup")
    medians = {mode: statistics.median(values) * 1000 for mode, values in times.items()}
    return {**medians, "ratio": medians["cgroup"] / medians["process-group"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-containment-") as tmp:
        result = asyncio.run(run(args.samples, Path(tmp)))
    if not result:
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print(f"spawn with a cgroup per attempt   median {result['cgroup']:.2f} ms")
        print(f"baseline: spawn, process group    median {result['process-group']:.2f} ms")
        print(f"ratio {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

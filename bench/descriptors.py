"""Many workloads under a small open-files limit: how many run, how the rest fail, and whether the agent
keeps answering.

    .venv/bin/python -m bench.descriptors [--workloads 1500] [--soft 1024] [--hard 524288] [--samples 5]

Starts a stock mosquitto (tests.support.broker) and the agent as a subprocess via the CLI, sets the
agent's open-files limit from outside (prlimit(2), as systemd's default soft 1024 / hard 524288), then
publishes N retained desired documents for `sleep 600` workloads and waits until the node status counts
every one of them settled (running or failed). It prints the states, the distinct failure reasons, the
agent's open descriptors and RSS, and the time from a new desired document to its `validating` status
with N workloads running, against the same measured on the idle agent before (median of --samples).
It measures and does not test: exit 0 whatever the figures, 1 if the run itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import leftovers  # noqa: E402
from tests.support.agent import AgentProcess, desired, desired_topic, node_counts, sleeper  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.mqtt import Probe  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

NODE = "node-1"


async def answer_s(probe: Probe, name: str) -> float:
    """Seconds from a new execution's desired document to its `validating` status.

    Subscribed to that one status topic only: a probe subscribed to thousands of statuses at QoS 1
    falls behind under load and the broker drops what queues past 1000 for it.
    """
    await probe.subscribe(f"reconcile/v1/nodes/{NODE}/executions/{name}/status")
    mark = probe.mark()
    started = time.monotonic()
    await probe.publish(
        desired_topic(NODE, name), desired(name, command=sleeper(600), window_s=10), retain=True
    )
    await probe.wait_for(
        lambda m: (
            m.topic.endswith(f"/executions/{name}/status")
            and m.json()["observed_state"]["state_type"] == "validating"
        ),
        after=mark,
        timeout=120,
        what=f"{name} validating",
    )
    return time.monotonic() - started


async def retained_statuses(broker: Broker) -> dict[str, dict[str, Any]]:
    """Every retained execution status, read at QoS 0 (a QoS 1 subscription is served at most 1020).

    The broker sends a subscription's retained messages before anything published after it, so a fence
    published once subscribed arrives after the last of them.
    """
    async with Probe(broker.host, broker.port) as reader:
        await reader.subscribe(f"reconcile/v1/nodes/{NODE}/executions/+/status", qos=0)
        fence = f"reconcile/v1/nodes/{NODE}/executions/fence/status"
        await reader.publish(fence, b"{}", qos=0)
        await reader.wait_for(lambda m: m.topic == fence, timeout=120, what="the fence")
        return {m.json()["execution_id"]: m.json() for m in reader.messages if m.payload and m.topic != fence}


async def published_all(broker: Broker, count: int) -> None:
    """Wait until every retained status is settled: the outbox has caught up with the decisions (the node
    status rides ahead of it, so its counts alone say what was decided, not what was published)."""

    async def caught_up() -> bool:
        statuses = await retained_statuses(broker)
        settled = ("running", "failed")
        return len(statuses) >= count and all(
            d["observed_state"]["state_type"] in settled for d in statuses.values()
        )

    await wait_until(caught_up, timeout=1800, interval=5, what="every status published")


async def answers(probe: Probe, label: str, samples: int) -> float:
    return statistics.median([await answer_s(probe, f"{label}-{i}") for i in range(samples)])


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    broker = Broker(workdir / "broker")
    broker.start()
    agent = AgentProcess(broker, workdir / "agent", log={"format": "json", "level": "info"})
    try:
        agent.start()
        assert agent.proc is not None
        resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (args.soft, args.hard))
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/status")
            idle = await answers(probe, "idle", args.samples)
            started = time.monotonic()
            for i in range(args.workloads):
                name = f"w{i}"
                await probe.publish(
                    desired_topic(NODE, name), desired(name, command=sleeper(600)), retain=True
                )
            total = args.workloads + args.samples

            def settled() -> bool:
                counts = node_counts(probe, NODE)
                return counts.get("running", 0) + counts.get("failed", 0) >= total

            await wait_until(settled, timeout=1800, interval=0.5, what="every workload settled")
            settle_s = time.monotonic() - started
            await published_all(broker, total)
            published_s = time.monotonic() - started
            busy = await answers(probe, "busy", args.samples)
            reasons: Counter[str] = Counter()
            newest = await retained_statuses(broker)
            for document in newest.values():
                if document["observed_state"]["state_type"] == "failed":
                    reasons[document["observed_state"]["message"]] += 1
            process = psutil.Process(agent.proc.pid)
            return {
                "workloads": args.workloads,
                "limit": f"soft {args.soft}, hard {args.hard}",
                "states": node_counts(probe, NODE),
                "failure reasons": dict(reasons),
                "all settled (decided) s": round(settle_s, 1),
                "all published s": round(published_s, 1),
                "agent open descriptors": len(os.listdir(f"/proc/{agent.proc.pid}/fd")),
                "agent RSS MB": round(process.memory_info().rss / 2**20, 1),
                "answer s idle (median)": round(idle, 4),
                "answer s busy (median)": round(busy, 4),
                "answer ratio busy/idle": round(busy / idle, 2),
                "agent alive": agent.proc.poll() is None,
                "tracebacks in log": agent.log_path.read_text().count("Traceback"),
            }
    finally:
        agent.kill()
        leftovers.kill(leftovers.workloads_under(workdir))
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=1500)
    parser.add_argument("--soft", type=int, default=1024)
    # systemd's default hard limit, or this machine's own if lower: raising it needs CAP_SYS_RESOURCE.
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    parser.add_argument("--hard", type=int, default=min(524288, own_hard))
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-descriptors-") as tmp:
        try:
            figures = asyncio.run(run(args, Path(tmp)))
        except (AssertionError, OSError) as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

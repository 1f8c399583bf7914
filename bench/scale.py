"""A thousand executions on one node: how fast they start, what the agent costs with them, and a restart.

    .venv/bin/python -m bench.scale [--count 1000] [--big 2000] [--rounds 3] [--json]
    .venv/bin/python -m bench.scale --agent-root DIR   # the agent of another tree (an earlier commit)

Each round, on a fresh broker and a fresh state directory:
- baseline: ``--count`` ``sleep`` processes spawned directly (``subprocess.Popen``, one after the other),
  until the last one has returned;
- burst: ``--count`` desired documents published at once (QoS 1, retained, one client, every publish in
  flight together), timed until the node status counts them all ``validating`` (the probe reads the node
  status alone: one topic, so it cannot be the one that falls behind);
- the agent's RSS once they all run, and its CPU while they run and nothing changes (10 s);
- kill -9 of the agent and a start of a new one: time until its node status is ``online`` with all of
  them re-adopted ``running``;
- big: ``--big`` desired documents at once, the same way: the time, and whether every one of them was
  acted on (none lost).

Figures are medians over the rounds; each ratio is to the baseline of the same round. Targets: burst
<= 4 x baseline (2.5 x), RSS <= 100 MB, idle CPU <= 1 % of a core, restart <= 2 s. The broker is a
stock mosquitto (tests/support/broker.py, ``stock=True``: its defaults, so Nagle on, no persistence,
1000 messages queued per client at most: a burst the agent does not keep up with is dropped there).
The exit status is 0 whatever the figures; 1 if the run itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

from agent.tcp import acknowledge_at_once  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.leftovers import remove_cgroups  # noqa: E402

NODE = "bench-node"
PREFIX = "reconcile/v1"
NODE_TOPIC = f"{PREFIX}/nodes/{NODE}/status"
COMMAND = ["sleep", "600"]
VALIDATION_S = 5.0  # long enough to see all `validating`, short enough to measure them `running`
IDLE_S = 10.0
TIMEOUT_S = 600.0


class BenchError(Exception):
    """The run itself failed: no figures."""


def desired(execution_id: str) -> bytes:
    return json.dumps(
        {
            "execution_id": execution_id,
            "generation": 1,
            "desired_state": {"state_type": "running"},
            "spec": {"command": COMMAND, "validation": {"window_s": VALIDATION_S, "deadline_s": 600.0}},
        }
    ).encode()


def spawn_directly(count: int) -> float:
    """Seconds to start ``count`` ``sleep`` processes with Popen, one after the other (then killed)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(COMMAND, start_new_session=True) for _ in range(count)]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()
    return elapsed


class NodeWatch:
    """The node status as it arrives (non-retained ones only: a previous agent's retained one is history)."""

    def __init__(self, client: aiomqtt.Client, alive: Callable[[], bool]) -> None:
        self.client = client
        self.alive = alive
        self.latest: dict[str, Any] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for message in self.client.messages:
            if message.retain or not isinstance(message.payload, bytes) or not message.payload:
                continue
            self.latest = json.loads(message.payload)
            self.changed.set()

    async def until(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> float:
        """perf_counter() when a node status matching ``predicate`` arrived."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not predicate(self.latest):
                    if not self.alive():
                        raise BenchError(f"the agent exited while waiting for {what}")
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):  # to look at the agent now and then
                            await self.changed.wait()
        except TimeoutError:
            raise BenchError(f"timed out waiting for {what}; last node status: {self.latest}") from None
        return time.perf_counter()


def counts(document: dict[str, Any]) -> dict[str, int]:
    executions: dict[str, int] = document.get("executions", {})
    return executions


def validated(document: dict[str, Any]) -> int:
    """Executions at least `validating`: the early ones of a burst may be `running` by the last one."""
    return counts(document).get("validating", 0) + counts(document).get("running", 0)


class AgentProcess:
    def __init__(self, broker: Broker, workdir: Path, root: Path) -> None:
        self.root = root
        self.state_dir = workdir / "state"
        self.config = workdir / "agent.yaml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            yaml.safe_dump(
                {
                    "node_id": NODE,
                    "state_dir": str(self.state_dir),
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "log": {"format": "json", "level": "warning"},
                }
            )
        )
        self.log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.root,  # `-m` puts it first on sys.path: that tree's agent
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def publish_all(client: aiomqtt.Client, prefix: str, count: int) -> None:
    await asyncio.gather(
        *(
            client.publish(
                f"{PREFIX}/nodes/{NODE}/executions/{prefix}{i}/desired",
                desired(f"{prefix}{i}"),
                qos=1,
                retain=True,
            )
            for i in range(count)
        )
    )


def create_cost_us(parent: Path, count: int = 50) -> float:
    """Median microseconds to create an empty file beside the state directory, read just before a burst.

    Printed with the figures because it is the disk's state, not the agent's, and it moves them: on a
    journal-less ext4 (this workplace's) every creation re-checks the inodes deleted in the last ~25 s,
    so after a mass deletion it rises from ~25 us to 1-1.5 ms, and each spawn creates files (its run
    directory, output directory, format marker, cgroup record, pid file)."""
    probe = Path(tempfile.mkdtemp(prefix="create-cost-", dir=parent))
    took = []
    try:
        for i in range(count):
            started = time.perf_counter()
            os.close(os.open(probe / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            took.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return statistics.median(took) * 1e6


def cpu_percent(pid: int, seconds: float) -> float:
    process = psutil.Process(pid)
    before = process.cpu_times()
    time.sleep(seconds)  # a measurement interval, not synchronisation
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def kill_workloads(state_dir: Path) -> None:
    """Kill every workload, and wait for their supervisors: each writes its exit file once its workload
    has died, and one still writing when the directory is removed makes the removal fail."""
    supervisors = []
    for pid_file in state_dir.glob("executions/*/pid-*"):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            workload = psutil.Process(int(pid_file.read_text()))
            supervisor = workload.parent()
            if supervisor is not None and supervisor.pid != 1:
                supervisors.append(supervisor)
            os.killpg(workload.pid, signal.SIGKILL)
    psutil.wait_procs(supervisors, timeout=TIMEOUT_S)
    remove_cgroups(state_dir)


def client(broker: Broker, name: str) -> aiomqtt.Client:
    made = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"bench-scale-{name}-{os.getpid()}",
        max_inflight_messages=1000,
        timeout=TIMEOUT_S,  # a burst's last acknowledgement comes long after its publish call
    )
    made.pending_calls_threshold = 1 << 30  # a burst is what this client is for
    return acknowledge_at_once(made)


async def one_round(args: argparse.Namespace, workdir: Path, number: int) -> dict[str, float | bool]:
    broker = Broker(workdir / "broker", stock=True)
    await broker.astart()
    agent = AgentProcess(broker, workdir / "agent", args.agent_root)
    figures: dict[str, float | bool] = {}
    try:
        async with client(broker, "watch") as watch_client, client(broker, "publish") as publisher:
            await watch_client.subscribe(NODE_TOPIC, qos=1)
            watch = NodeWatch(watch_client, agent.alive)
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(watch.run(), name="node-watch")
                agent.start()
                await watch.until(lambda d: d.get("state") == "online", "the agent online")

                figures["baseline_s"] = await asyncio.to_thread(spawn_directly, args.count)
                figures["create_us"] = create_cost_us(agent.state_dir.parent)
                n = args.count
                started = time.perf_counter()
                await publish_all(publisher, f"r{number}-", n)
                done = await watch.until(lambda d: validated(d) == n, f"{n} validating")
                figures["burst_s"] = done - started
                await watch.until(lambda d: counts(d) == {"running": n}, f"{n} running")
                figures["rss_mb"] = psutil.Process(agent.pid).memory_info().rss / 1e6
                figures["idle_cpu_percent"] = await asyncio.to_thread(cpu_percent, agent.pid, IDLE_S)

                before = watch.latest.get("started_at")
                agent.kill()
                restarted = time.perf_counter()
                agent.start()
                back = await watch.until(
                    lambda d: (
                        d.get("started_at") != before
                        and d.get("state") == "online"
                        and counts(d) == {"running": n}
                    ),
                    "re-adopted online",
                )
                figures["restart_s"] = back - restarted

                big = args.big
                if not big:
                    reader.cancel()
                    return figures
                started = time.perf_counter()
                await publish_all(publisher, f"b{number}-", big)
                done = await watch.until(lambda d: validated(d) == n + big, f"{big} more validating")
                figures["big_s"] = done - started
                figures["big_none_lost"] = True  # every one was counted validating, or it timed out
                reader.cancel()
    finally:
        agent.kill()
        kill_workloads(agent.state_dir)
        await broker.astop()
    return figures


def median(rounds: list[dict[str, float | bool]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)


def summary(args: argparse.Namespace, rounds: list[dict[str, float | bool]]) -> dict[str, Any]:
    ratio = statistics.median(float(r["burst_s"]) / float(r["baseline_s"]) for r in rounds)
    big: dict[str, Any] = {}
    if args.big:
        per_execution = statistics.median(
            float(r["big_s"]) / float(r["baseline_s"]) * args.count / args.big for r in rounds
        )
        big = {
            "big_to_validating_s": round(median(rounds, "big_s"), 3),
            "big_ratio_per_execution": round(per_execution, 2),
            "big_none_lost": all(bool(r["big_none_lost"]) for r in rounds),
        }
    return {
        "count": args.count,
        "big": args.big,
        "rounds": len(rounds),
        "baseline_spawn_s": round(median(rounds, "baseline_s"), 3),
        "file_create_us": round(median(rounds, "create_us"), 1),
        "burst_to_validating_s": round(median(rounds, "burst_s"), 3),
        "burst_ratio": round(ratio, 2),
        **big,
        "rss_mb": round(median(rounds, "rss_mb"), 1),
        "idle_cpu_percent": round(median(rounds, "idle_cpu_percent"), 2),
        "restart_online_s": round(median(rounds, "restart_s"), 3),
        "targets": {
            "burst_ratio": 2.5,
            "burst_ratio_at_most": 4.0,
            "rss_mb": 100,
            "idle_cpu_percent": 1,
            "restart_s": 2,
        },
        "per_round": rounds,
    }


def render(figures: dict[str, Any]) -> str:
    n, big = figures["count"], figures["big"]
    lines = [
        f"rounds: {figures['rounds']} (medians)   broker: stock mosquitto (its defaults)",
        f"baseline: {n} x Popen(sleep) {figures['baseline_spawn_s']:.3f} s"
        f"   (a file creation on the state's disk before the burst: {figures['file_create_us']:.0f} us)",
        f"{n} published at once -> all validating {figures['burst_to_validating_s']:.3f} s"
        f"   ratio {figures['burst_ratio']:.2f} (target <= 2.5, at most 4)",
    ]
    if big:
        lines.append(
            f"{big} more at once -> all validating {figures['big_to_validating_s']:.3f} s"
            f"   ratio per execution {figures['big_ratio_per_execution']:.2f}"
            f"   none lost: {figures['big_none_lost']}"
        )
    return "\n".join(
        [
            *lines,
            f"with {n} running: RSS {figures['rss_mb']:.1f} MB (<= 100)"
            f"   idle CPU {figures['idle_cpu_percent']:.2f} % of a core (<= 1)",
            f"kill -9 + start with {n} running -> online, all re-adopted {figures['restart_online_s']:.3f} s (<= 2)",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--big", type=int, default=2000, help="the second burst, on top of --count running")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agent-root", type=Path, default=REPO, help="the tree whose agent runs")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = []
    failures: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        try:
            for number in range(args.rounds):
                rounds.append(asyncio.run(one_round(args, Path(tmp) / f"round-{number}", number)))
        except* (BenchError, OSError, aiomqtt.MqttError) as group:
            failures.extend(group.exceptions)
    if failures:
        for error in failures:
            print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    figures = summary(args, rounds)
    print(json.dumps(figures) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

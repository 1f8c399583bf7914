"""Restart with 200 running workloads: time to re-adopt them all, and the supervisor's memory per workload.

    .venv/bin/python -m bench.restart [--workloads 200] [--rounds 5] [--json]

Starts mosquitto (tests.support.broker) and the agent as a subprocess via the CLI, runs N `sleep`
workloads to `running`, then kills the agent with SIGKILL and starts it again, ``--rounds`` times. Each
round measures the time from starting the agent process to its node status saying `online` with all N
executions `running` (each re-adopted: the pids are checked to be the same as before). The baseline,
measured in the same run, is the same start with an empty state directory (no workloads).

Memory: the proportional set size (PSS, /proc/PID/smaps_rollup) of every supervisor with its log writers
(its descendants but the workload: none for the native supervisor, which writes its logs itself; the
shell supervisor's writers where the agent could build none), median and mean, and of the supervisor alone, next to a bare waiting
dash (`sh -c 'sleep 600 & wait'`) measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.broker import Broker  # noqa: E402
from tests.support.leftovers import remove_cgroups  # noqa: E402

NODE = "bench-node"
PREFIX = "reconcile/v1"


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


def with_writers_kib(supervisor: int, workload: int) -> int:
    """The supervisor's PSS and its descendants' (the shell's log writers and their heads), the workload's
    apart."""
    try:
        family = {c.pid for c in psutil.Process(supervisor).children(recursive=True)}
        family -= {workload} | {c.pid for c in psutil.Process(workload).children(recursive=True)}
    except psutil.Error:
        family = set()
    return pss_kib(supervisor) + sum(_pss_or_zero(pid) for pid in family)


def _pss_or_zero(pid: int) -> int:
    try:
        return pss_kib(pid)
    except (OSError, RuntimeError):
        return 0  # ended meanwhile (a head between two segments)


def stored_processes(state_dir: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(state_dir / "agent.db") as db:
        rows = db.execute("SELECT execution_id, state FROM executions").fetchall()
    return {eid: json.loads(state)["process"] for eid, state in rows if json.loads(state)["process"]}


class Agent:
    def __init__(self, broker: Broker, workdir: Path) -> None:
        self.state_dir = workdir / "state"
        self.config = workdir / "agent.yaml"
        document = {
            "node_id": NODE,
            "state_dir": str(self.state_dir),
            "mqtt": {"host": broker.host, "port": broker.port},
            "log": {"format": "json", "level": "warning"},
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(document))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def time_to_online(broker: Broker, agent: Agent, running: int) -> float:
    """Seconds from starting the agent process to its node status online with ``running`` running."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(f"{PREFIX}/nodes/{NODE}/status", qos=1)
        started = time.perf_counter()
        agent.start()
        async with asyncio.timeout(120):
            async for message in client.messages:
                if message.retain or not isinstance(message.payload, bytes):
                    continue  # the previous agent's retained status
                status = json.loads(message.payload)
                if status["state"] == "online" and status["executions"].get("running", 0) == running:
                    return time.perf_counter() - started
    raise RuntimeError("no online status")


async def start_workloads(broker: Broker, count: int) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(f"{PREFIX}/nodes/{NODE}/status", qos=1)
        for i in range(count):
            document = {
                "execution_id": f"w{i}",
                "generation": 1,
                "desired_state": {"state_type": "running"},
                "spec": {"command": ["sleep", "600"], "validation": {"window_s": 0.1}},
            }
            topic = f"{PREFIX}/nodes/{NODE}/executions/w{i}/desired"
            await client.publish(topic, json.dumps(document), qos=1, retain=True)
        async with asyncio.timeout(120):
            async for message in client.messages:
                status = json.loads(message.payload) if isinstance(message.payload, bytes) else {}
                if status.get("executions", {}).get("running", 0) == count:
                    return


def bare_dash_pss(count: int) -> list[int]:
    procs = [
        subprocess.Popen(["/bin/sh", "-c", "sleep 600 & wait"], start_new_session=True) for _ in range(count)
    ]
    try:
        time.sleep(0.5)  # let them reach `wait`; a measurement pause, not synchronisation
        return [pss_kib(p.pid) for p in procs]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def kill_workloads(root: Path) -> None:
    for pid_file in root.glob("**/executions/*/pid-*"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    for state_dir in root.glob("**/state"):
        remove_cgroups(state_dir)  # and what escaped the group, with the workloads' cgroups


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    broker = Broker(tmp / "broker")
    broker.start()
    empty = Agent(broker, tmp / "empty")
    agent = Agent(broker, tmp / "agent")
    try:
        baseline = []
        for _ in range(args.rounds):
            baseline.append(await time_to_online(broker, empty, 0))
            empty.kill()
        agent.start()
        await start_workloads(broker, args.workloads)
        before = {eid: p["pid"] for eid, p in stored_processes(agent.state_dir).items()}
        stored = stored_processes(agent.state_dir).values()
        alone = [pss_kib(p["supervisor_pid"]) for p in stored]
        pss = [with_writers_kib(p["supervisor_pid"], p["pid"]) for p in stored]
        dash = bare_dash_pss(20)
        rounds = []
        for _ in range(args.rounds):
            agent.kill()
            rounds.append(await time_to_online(broker, agent, args.workloads))
        after = {eid: p["pid"] for eid, p in stored_processes(agent.state_dir).items()}
        assert after == before, "a workload was restarted instead of re-adopted"
    finally:
        agent.kill()
        empty.kill()
        kill_workloads(tmp)
        broker.stop()
    figures = {
        "workloads": args.workloads,
        "restart_to_all_running_s_median": statistics.median(rounds),
        "empty_start_to_online_s_median": statistics.median(baseline),
        "restart_ratio": statistics.median(rounds) / statistics.median(baseline),
        "supervisor_pss_kib_median": statistics.median(pss),
        "supervisor_pss_kib_mean": statistics.mean(pss),
        "supervisor_alone_pss_kib_median": statistics.median(alone),
        "bare_dash_pss_kib_median": statistics.median(dash),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"broker: {broker.kind}   workloads: {args.workloads}   rounds: {args.rounds}")
    print(
        f"kill -9, restart -> all {args.workloads} re-adopted and online   "
        f"median {figures['restart_to_all_running_s_median'] * 1000:.0f} ms"
    )
    print(
        f"baseline: start with an empty state -> online   median {figures['empty_start_to_online_s_median'] * 1000:.0f} ms"
    )
    print(f"ratio {figures['restart_ratio']:.2f}")
    print(
        f"supervisor and log writers PSS per workload   median {figures['supervisor_pss_kib_median']:.0f} KiB   "
        f"mean {figures['supervisor_pss_kib_mean']:.0f} KiB   (target <= 300 KiB)   "
        f"supervisor alone {figures['supervisor_alone_pss_kib_median']:.0f} KiB"
    )
    print(f"baseline: a waiting dash   median {figures['bare_dash_pss_kib_median']:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

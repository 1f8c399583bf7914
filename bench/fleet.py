"""A fleet on one broker: N agents with E executions each, against one agent measured in the same run.

    .venv/bin/python -m bench.fleet                                # 100 agents x 10 executions, 3 rounds
    .venv/bin/python -m bench.fleet --agents 10 --executions 5 --rounds 2 --json

Starts one stock mosquitto (tests.support.broker with ``stock=True``: a listener, nothing else, so Nagle
on, no persistence, queues of 1000 + 20 in flight), then twice the same procedure, first with one agent
(the baseline), then with ``--agents``. Every agent is the real CLI (tests.support.agent.AgentProcess)
with its own node id, configuration and state directory. The procedure:

1. boot: start every agent at once; the time until each one's node status says `online`;
2. ``--rounds`` bursts: publish E desired documents (`sleep 600`) to every agent at once, all in one go
   (QoS 1, retained), and take each execution's time from its publish to its `validating` status, as
   received by an observer (subscribed at QoS 0, so the broker's queue of 1000 cannot drop any) and as
   decided by its agent (the status's `updated_at`, same host clock); then stop and delete them all,
   waiting on the node statuses' counts;
3. during the first round, once all run: each agent's RSS, and the broker's and agents' CPU over
   ``--idle-s`` seconds of a fleet at rest (the node status refresh every keepalive_s / 2).

It prints medians over the rounds of each round's p50 and p99, the broker's CPU seconds per phase, and
each figure's ratio to the baseline, with the load average before and after. Every process it started
(agents, supervisors, workloads, the broker) is killed at the end, also on Ctrl-C or SIGTERM. It measures
and does not test: exit 0 whatever the figures, 1 if the run itself fails (a timeout, a dead agent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiomqtt
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import leftovers  # noqa: E402
from tests.support.agent import (  # noqa: E402
    PREFIX,
    AgentProcess,
    desired,
    desired_topic,
    sleeper,
    status_topic,
    ts,
)
from tests.support.broker import Broker  # noqa: E402
from tests.support.mqtt import Message, Probe  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

ACTIVE = frozenset({"pending", "starting", "validating", "running", "degraded", "stopping"})
VALIDATED = frozenset({"validating", "running"})
PHASE_TIMEOUT_S = 900.0
# The bench's publisher never lets Nagle hold a document back, nor paho's window of 20 pace a burst:
# the figure is the fleet's, not the instrument's.
CLIENT_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
PUBLISH_WINDOW = 1000


class BenchError(Exception):
    """The run itself failed: no figures."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def load() -> str:
    """The load average as `uptime` prints it."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass
class Watch:
    """Reads an observer's messages incrementally: newest node status per node, first sightings per topic."""

    probe: Probe
    scanned: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    first: dict[tuple[str, str], Message] = field(default_factory=dict)  # (topic, state) -> message
    node_status_bytes: int = 0  # the newest node status's size

    def update(self) -> None:
        fresh = self.probe.messages[self.scanned :]
        self.scanned += len(fresh)
        for message in fresh:
            if not message.payload:
                continue
            try:
                document = message.json()
            except ValueError:
                continue
            if message.topic.endswith("/status") and "/executions/" not in message.topic:
                self.nodes[str(document["node_id"])] = document
                self.node_status_bytes = len(message.payload)
            elif "observed_state" in document:
                key = (message.topic, str(document["observed_state"]["state_type"]))
                self.first.setdefault(key, message)

    def counts(self, node: str) -> dict[str, int]:
        counts: dict[str, int] = self.nodes.get(node, {}).get("executions", {})
        return counts


class Fleet:
    """N agents on one broker, each with its own node id, configuration and state directory."""

    def __init__(self, broker: Broker, workdir: Path, label: str, size: int) -> None:
        self.workdir = workdir
        self.names = [f"{label}-{i:03d}" for i in range(size)]
        self.agents = [
            AgentProcess(
                broker,
                workdir / name,
                node_id=name,
                log={"format": "json", "level": "warning"},
            )
            for name in self.names
        ]

    def start(self) -> None:
        for agent in self.agents:
            agent.start()

    def processes(self) -> list[psutil.Process]:
        alive = []
        for agent in self.agents:
            if agent.proc is None or agent.proc.poll() is not None:
                raise BenchError(f"agent {agent.config_path.stem} is not running; see {agent.log_path}")
            alive.append(psutil.Process(agent.proc.pid))
        return alive

    def tracebacks(self) -> list[str]:
        """Each traceback in the agents' logs as "node: its exception line" (the logs go with the run)."""
        found = []
        for agent in self.agents:
            lines = agent.log_lines()
            for i, line in enumerate(lines):
                if "Traceback" in str(line.get("exception", "")):
                    last = str(line["exception"]).strip().splitlines()[-1]
                    found.append(f"{agent.config_path.stem}: {line.get('event')}: {last}")
                elif str(line.get("raw", "")).startswith("Traceback"):  # printed by Python itself
                    after = (str(n.get("raw", "")) for n in lines[i + 1 :])
                    found.append(
                        f"{agent.config_path.stem}: {next((a for a in after if a[:1] not in ' '), '')}"
                    )
        return found

    def stop(self) -> None:
        """SIGTERM every agent (a clean stop: `offline`), then SIGKILL what is left, then the workloads."""
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                with suppress(ProcessLookupError):
                    agent.signal(signal.SIGTERM)
        for agent in self.agents:
            if agent.proc is not None:
                try:
                    agent.wait(30)
                except subprocess.TimeoutExpired:
                    agent.kill()
        leftovers.kill(leftovers.workloads_under(self.workdir))
        for agent in self.agents:
            leftovers.remove_cgroups(agent.state_dir)


@dataclass
class Round:
    received_ms: list[float]  # publish -> validating arrived at the observer
    decided_ms: list[float]  # publish -> the agent decided validating (its updated_at)
    missed: int  # executions whose validating status the observer never saw
    burst_s: float  # publish -> every node counting all E validating or running
    broker_cpu_s: float  # the broker's CPU over the burst
    drain_s: float  # stop + delete of all of them, until every node counts none
    desired_bytes: float  # mean size of a desired document, and of a validating status
    status_bytes: float


async def wait_all(watch: Watch, fleet: Fleet, done: Callable[[dict[str, int]], bool], what: str) -> None:
    def check() -> bool:
        watch.update()
        fleet.processes()  # a dead agent fails the run at once instead of at the timeout
        return all(done(watch.counts(node)) for node in fleet.names)

    await wait_until(check, timeout=PHASE_TIMEOUT_S, interval=0.1, what=what)


async def boot(fleet: Fleet, watch: Watch) -> float:
    started = time.monotonic()
    mark = watch.probe.mark()
    fleet.start()

    def online() -> bool:
        fleet.processes()
        seen = {
            m.json()["node_id"]
            for m in watch.probe.messages[mark:]
            if m.payload and m.topic.endswith("/status") and "/executions/" not in m.topic
            if m.json().get("state") == "online"
        }
        return seen >= set(fleet.names)

    await wait_until(online, timeout=PHASE_TIMEOUT_S, interval=0.05, what="every agent online")
    return time.monotonic() - started


async def publish_all(client: aiomqtt.Client, documents: list[tuple[str, bytes]]) -> None:
    await asyncio.gather(*(client.publish(topic, body, qos=1, retain=True) for topic, body in documents))


Ids = list[tuple[str, str]]  # (node id, execution id)


def running_document(execution_id: str) -> bytes:
    return json.dumps(desired(execution_id, command=sleeper(600), window_s=2.0)).encode()


async def burst(
    fleet: Fleet,
    watch: Watch,
    client: aiomqtt.Client,
    broker: psutil.Process,
    *,
    executions: int,
    number: int,
) -> tuple[Round, Ids]:
    """One round: E executions on every agent at once; returns the figures and the executions' ids."""
    ids = [(node, f"r{number}-w{i}") for i in range(executions) for node in fleet.names]
    documents = [(desired_topic(node, eid), running_document(eid)) for node, eid in ids]
    cpu_before = cpu_s(broker)
    sent_mono, sent_wall = time.monotonic(), time.time()
    await publish_all(client, documents)
    await wait_all(
        watch,
        fleet,
        lambda counts: sum(counts.get(s, 0) for s in VALIDATED) >= executions,
        "every execution validating",
    )
    burst_s = time.monotonic() - sent_mono
    broker_cpu = cpu_s(broker) - cpu_before
    watch.update()
    received, decided, sizes, missed = [], [], [], 0
    for node, eid in ids:
        message = watch.first.get((status_topic(node, eid), "validating"))
        if message is None:
            missed += 1
            continue
        received.append((message.time - sent_mono) * 1000)
        sizes.append(len(message.payload))
        decided.append((ts(message.json()["updated_at"]) - sent_wall) * 1000)
    figures = Round(
        received_ms=received,
        decided_ms=decided,
        missed=missed,
        burst_s=burst_s,
        broker_cpu_s=broker_cpu,
        drain_s=0.0,
        desired_bytes=statistics.mean(len(body) for _, body in documents),
        status_bytes=statistics.mean(sizes) if sizes else 0.0,
    )
    return figures, ids


async def singles(fleet: Fleet, watch: Watch, client: aiomqtt.Client, count: int) -> tuple[list[float], Ids]:
    """Desired -> validating received (ms) of one execution at a time, on the agents in turn."""
    latencies, ids = [], []
    for i in range(count):
        node, eid = fleet.names[i % len(fleet.names)], f"single-{i}"
        key = (status_topic(node, eid), "validating")
        started = time.monotonic()
        await client.publish(desired_topic(node, eid), running_document(eid), qos=1, retain=True)

        def arrived(key: tuple[str, str] = key) -> bool:
            watch.update()
            return key in watch.first

        await wait_until(arrived, timeout=PHASE_TIMEOUT_S, interval=0.002, what=f"{eid} validating")
        latencies.append((watch.first[key].time - started) * 1000)
        ids.append((node, eid))
    return latencies, ids


async def drain(fleet: Fleet, watch: Watch, client: aiomqtt.Client, ids: Ids) -> float:
    """Stop and delete ``ids`` once they run; seconds until every node counts none."""
    started = time.monotonic()
    await wait_all(
        watch, fleet, lambda counts: not any(counts.get(s, 0) for s in ACTIVE - {"running"}), "all running"
    )
    stop = [
        (desired_topic(node, eid), json.dumps(desired(eid, generation=2, state="stopped")).encode())
        for node, eid in ids
    ]
    await publish_all(client, stop)
    await wait_all(
        watch,
        fleet,
        lambda counts: not any(counts.get(s, 0) for s in ACTIVE),
        "every execution stopped",
    )
    await publish_all(client, [(desired_topic(node, eid), b"") for node, eid in ids])
    await wait_all(watch, fleet, lambda counts: not sum(counts.values()), "every execution deleted")
    return time.monotonic() - started


def quiet_logger() -> logging.Logger:
    """aiomqtt warns on every publish beyond 10 awaiting their PUBACK, and a burst is all of them."""
    logger = logging.getLogger("bench.fleet.publisher")
    logger.setLevel(logging.ERROR)
    return logger


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def at_rest(fleet: Fleet, broker: psutil.Process, idle_s: float) -> dict[str, float]:
    """RSS of each agent, and CPU of the broker and the agents over ``idle_s`` of a fleet at rest."""
    agents = fleet.processes()
    rss = [p.memory_info().rss / 2**20 for p in agents]
    broker_before, agents_before = cpu_s(broker), [cpu_s(p) for p in agents]
    started = time.monotonic()
    await asyncio.sleep(idle_s)  # a measurement window, not synchronisation
    elapsed = time.monotonic() - started
    agents_cpu = [cpu_s(p) - before for p, before in zip(agents, agents_before, strict=True)]
    return {
        "rss_mib_mean": statistics.mean(rss),
        "rss_mib_max": max(rss),
        "broker_idle_cpu_pct": (cpu_s(broker) - broker_before) / elapsed * 100,
        "agent_idle_cpu_pct_mean": statistics.mean(agents_cpu) / elapsed * 100,
    }


async def measure(
    broker: Broker, workdir: Path, label: str, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    fleet = Fleet(broker, workdir / label, label, size)
    assert broker.pid is not None
    broker_process = psutil.Process(broker.pid)
    try:
        async with (
            Probe(broker.host, broker.port) as probe,
            aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=f"fleet-bench-{uuid.uuid4().hex[:8]}",
                socket_options=CLIENT_SOCKET_OPTIONS,
                max_inflight_messages=PUBLISH_WINDOW,
                logger=quiet_logger(),
                timeout=60,
            ) as client,
        ):
            await probe.subscribe(f"{PREFIX}/nodes/+/status", qos=1)
            await probe.subscribe(f"{PREFIX}/nodes/+/executions/+/status", qos=0)
            watch = Watch(probe)
            cpu_before = cpu_s(broker_process)
            boot_s = await boot(fleet, watch)
            boot_cpu = cpu_s(broker_process) - cpu_before
            # what one agent's start costs: N of them on this machine's cores explain the boot time
            agent_boot_cpu = statistics.mean(cpu_s(p) for p in fleet.processes())
            rounds: list[Round] = []
            rest: dict[str, float] = {}
            single_ms: list[float] = []
            for number in range(args.rounds):
                figures, ids = await burst(
                    fleet, watch, client, broker_process, executions=args.executions, number=number
                )
                if number == 0:
                    await wait_all(
                        watch,
                        fleet,
                        lambda counts: counts.get("running", 0) >= args.executions,
                        "every execution running",
                    )
                    rest = await at_rest(fleet, broker_process, args.idle_s)
                    single_ms, extra = await singles(fleet, watch, client, args.singles)
                    ids += extra
                figures.drain_s = await drain(fleet, watch, client, ids)
                rounds.append(figures)
        tracebacks = fleet.tracebacks()
    finally:
        fleet.stop()
    return summarise(
        size,
        boot_s=boot_s,
        boot_cpu=boot_cpu,
        agent_boot_cpu=agent_boot_cpu,
        node_status_bytes=watch.node_status_bytes,
        single_ms=single_ms,
        rounds=rounds,
        rest=rest,
        tracebacks=tracebacks,
    )


def summarise(
    size: int,
    *,
    boot_s: float,
    boot_cpu: float,
    agent_boot_cpu: float,
    node_status_bytes: int,
    single_ms: list[float],
    rounds: list[Round],
    rest: dict[str, float],
    tracebacks: list[str],
) -> dict[str, Any]:
    def median_of(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    def round_stat(pick: str, fraction: float) -> float:
        return median_of([percentile(getattr(r, pick), fraction) for r in rounds if getattr(r, pick)])

    return {
        "agents": size,
        "boot_s": round(boot_s, 2),
        "broker_boot_cpu_s": round(boot_cpu, 3),
        "agent_boot_cpu_s": round(agent_boot_cpu, 2),
        "received_p50_ms": round_stat("received_ms", 0.5),
        "received_p99_ms": round_stat("received_ms", 0.99),
        "decided_p50_ms": round_stat("decided_ms", 0.5),
        "decided_p99_ms": round_stat("decided_ms", 0.99),
        "single_p50_ms": round(statistics.median(single_ms), 1),
        "single_p99_ms": round(percentile(single_ms, 0.99), 1),
        "burst_s": round(statistics.median(r.burst_s for r in rounds), 2),
        "broker_burst_cpu_s": round(statistics.median(r.broker_cpu_s for r in rounds), 3),
        "drain_s": round(statistics.median(r.drain_s for r in rounds), 2),
        "missed": sum(r.missed for r in rounds),
        "rss_mib_mean": round(rest["rss_mib_mean"], 1),
        "rss_mib_max": round(rest["rss_mib_max"], 1),
        "broker_idle_cpu_pct": round(rest["broker_idle_cpu_pct"], 3),
        "agent_idle_cpu_pct_mean": round(rest["agent_idle_cpu_pct_mean"], 2),
        "desired_bytes": round(statistics.mean(r.desired_bytes for r in rounds)),
        "status_bytes": round(statistics.mean(r.status_bytes for r in rounds)),
        "node_status_bytes": node_status_bytes,
        "tracebacks": len(tracebacks),
        "traceback_lines": tracebacks,
    }


ROWS = [
    ("boot_s", "boot: all agents online (s)"),
    ("broker_boot_cpu_s", "broker CPU during boot (s)"),
    ("agent_boot_cpu_s", "CPU of one agent's start, mean (s)"),
    ("received_p50_ms", "desired -> validating received, p50 (ms)"),
    ("received_p99_ms", "desired -> validating received, p99 (ms)"),
    ("decided_p50_ms", "desired -> validating decided, p50 (ms)"),
    ("decided_p99_ms", "desired -> validating decided, p99 (ms)"),
    ("single_p50_ms", "one at a time, all running: p50 (ms)"),
    ("single_p99_ms", "one at a time, all running: p99 (ms)"),
    ("burst_s", "burst: all validating (s)"),
    ("broker_burst_cpu_s", "broker CPU during a burst (s)"),
    ("drain_s", "stop + delete all, until counted (s)"),
    ("rss_mib_mean", "agent RSS, mean (MiB)"),
    ("rss_mib_max", "agent RSS, max (MiB)"),
    ("broker_idle_cpu_pct", "broker CPU at rest (% of a core)"),
    ("agent_idle_cpu_pct_mean", "agent CPU at rest, mean (% of a core)"),
    ("desired_bytes", "desired document, mean (bytes)"),
    ("status_bytes", "validating status, mean (bytes)"),
    ("node_status_bytes", "node status (bytes)"),
    ("missed", "validating statuses not seen"),
    ("tracebacks", "tracebacks in the agents' logs"),
]


def table(base: dict[str, Any], fleet: dict[str, Any]) -> str:
    width = max(len(label) for _, label in ROWS)
    agents = f"{fleet['agents']} agents"
    lines = [f"{'':{width}}  {'1 agent':>10}  {agents:>10}  {'ratio':>6}"]
    for key, label in ROWS:
        ratio = f"{fleet[key] / base[key]:6.2f}" if base[key] else "     -"
        lines.append(f"{label:{width}}  {base[key]:>10}  {fleet[key]:>10}  {ratio}")
    return "\n".join(lines)


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt at once, so the cleanup in the finally blocks runs.

    Raised here rather than by asyncio's own SIGINT handling, which only cancels the main task: a Ctrl-C
    also reaches the agents (the terminal's process group), and one found dead must not read as a failure.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    broker = Broker(workdir / "broker", stock=True)
    broker.start()
    try:
        baseline = await measure(broker, workdir, "solo", 1, args)
        fleet = await measure(broker, workdir, "fleet", args.agents, args)
        return {"broker": f"{broker.kind} {broker.version} (stock)", "baseline": baseline, "fleet": fleet}
    finally:
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--executions", type=int, default=10, help="per agent and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--singles", type=int, default=20, help="executions published one at a time on the busy fleet"
    )
    parser.add_argument("--idle-s", type=float, default=30.0, help="the window of the at-rest CPU figures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.agents, args.executions, args.rounds, args.singles) < 1 or args.idle_s <= 0:
        parser.error("--agents, --executions, --rounds and --singles must be at least 1, --idle-s positive")
    load_before = load()
    with interrupts(), tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        try:
            figures = asyncio.run(run(args, Path(tmp)))
        except (BenchError, AssertionError, OSError, aiomqtt.MqttError) as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; every process it started is stopped", file=sys.stderr)
            return 130
    figures |= {"load_before": load_before, "load_after": load(), "executions": args.executions}
    if args.json:
        print(json.dumps(figures))
        return 0
    print(
        f"{figures['broker']}; {args.agents} agents x {args.executions} executions, "
        f"{args.rounds} rounds (medians); load average before {load_before}, after {figures['load_after']}"
    )
    print(table(figures["baseline"], figures["fleet"]))
    for part in ("baseline", "fleet"):
        for line in figures[part]["traceback_lines"]:
            print(f"traceback ({part}) {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

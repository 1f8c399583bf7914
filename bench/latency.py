"""Latency of the agent's hot path: desired document published -> ``validating`` status received.

Run with the project's interpreter from the repository root::

    .venv/bin/python -m bench.latency                # agent as a subprocess via the CLI (the realistic way)
    .venv/bin/python -m bench.latency --in-process   # agent in the benchmark's own event loop
    .venv/bin/python -m bench.latency --json         # the figures as one JSON object

A real broker (mosquitto, or the amqtt fallback of tests/support/broker.py) is started on a free port.
Each sample publishes a new execution (QoS 1, retained, ``sleep 30`` with a long validation window) and
measures, on a probe client, from just before the publish to the arrival of the ``validating`` status of
that execution. The workload's process group is then killed and the benchmark waits until the agent has
reported it ended and is idle again, so samples do not overlap.

The figure is set against a FLOOR measured in the same run on the same broker: the medians of two MQTT
one-way trips (QoS 1, retained, A -> B and B -> A: the desired document in, the status out), one
``subprocess.Popen`` of ``sleep 30`` and one small write + ``fsync`` in the same temporary directory.
The target is a ratio <= 2. The exit status is 0 whatever the ratio (this is a measurement, not a test),
non-zero only if the run itself failed.

Besides the total, three stages are reported from the status documents' own ``updated_at`` (the agent's
wall clock, the same host's clock as ours): ``ingress`` publish -> the agent decided ``pending``;
``spawn`` that decision -> the agent decided ``validating`` (commit, spawn of the supervisor and the
workload); ``egress`` that decision -> the ``validating`` status arrived (commit, outbox, broker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiomqtt  # noqa: E402
import yaml  # noqa: E402

from tests.support.broker import Broker, BrokerError  # noqa: E402
from tests.support.leftovers import remove_cgroups  # noqa: E402

PREFIX = "reconcile/v1"
NODE_ID = "bench-node"
STATUS_FILTER = f"{PREFIX}/nodes/{NODE_ID}/executions/+/status"
NODE_TOPIC = f"{PREFIX}/nodes/{NODE_ID}/status"
FLOOR_TOPIC = "bench/floor"
ACTIVE_STATES = frozenset({"pending", "starting", "validating", "running", "degraded", "stopping"})
ENDED_STATES = frozenset({"failed", "completed", "stopped", "lost"})
COMMAND = ["sleep", "30"]

AGENT_READY_TIMEOUT_S = 30.0
SAMPLE_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 10.0
MQTT_TIMEOUT_S = 5.0
# The benchmark's own clients never let Nagle's algorithm hold a message back: an instrument must not
# add stalls of its own (see bench/README.md).
CLIENT_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class BenchError(Exception):
    """The run itself failed (broker, agent or a timeout): no figures."""


# --- small statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, min and max of durations in seconds, in milliseconds rounded to the microsecond."""
    return {
        "median": round(statistics.median(values) * 1000, 3),
        "p90": round(percentile(values, 0.9) * 1000, 3),
        "min": round(min(values) * 1000, 3),
        "max": round(max(values) * 1000, 3),
    }


def parse_time(text: str) -> float:
    """An RFC 3339 UTC time with microseconds (the protocol's format) as epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# --- the probe: one client that records every message with its arrival time ----------------------------


@dataclass(frozen=True)
class Arrival:
    index: int
    topic: str
    payload: bytes
    perf: float  # time.perf_counter() on arrival
    wall: float  # time.time() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


Predicate = Callable[[Arrival], bool]


@dataclass
class Recorder:
    """Collects a client's messages; ``wait`` resolves on the first match arriving after ``after``."""

    arrivals: list[Arrival] = field(default_factory=list)
    waiters: list[tuple[Predicate, int, asyncio.Future[Arrival]]] = field(default_factory=list)
    failure: BaseException | None = None

    def record(self, topic: str, payload: bytes, perf: float, wall: float) -> None:
        arrival = Arrival(len(self.arrivals), topic, payload, perf, wall)
        self.arrivals.append(arrival)
        for waiter in list(self.waiters):
            predicate, after, future = waiter
            if arrival.index >= after and not future.done() and _matches(predicate, arrival):
                future.set_result(arrival)
                self.waiters.remove(waiter)

    def fail(self, error: BaseException) -> None:
        self.failure = error
        for _, _, future in self.waiters:
            if not future.done():
                future.set_exception(BenchError(f"the probe's connection failed: {error!r}"))
        self.waiters.clear()

    @property
    def next_index(self) -> int:
        return len(self.arrivals)

    def expect(self, predicate: Predicate, after: int = 0) -> asyncio.Future[Arrival]:
        """A future for the first message from index ``after`` on that matches (including ones already in)."""
        future: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(BenchError(f"the probe's connection failed: {self.failure!r}"))
            return future
        for arrival in self.arrivals[after:]:
            if _matches(predicate, arrival):
                future.set_result(arrival)
                return future
        self.waiters.append((predicate, after, future))
        return future


def _matches(predicate: Predicate, arrival: Arrival) -> bool:
    try:
        return predicate(arrival)
    except (ValueError, KeyError, TypeError, IndexError):  # an empty or unexpected payload: no match
        return False


async def _collect(client: aiomqtt.Client, recorder: Recorder) -> None:
    try:
        async for message in client.messages:
            perf, wall = time.perf_counter(), time.time()
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            recorder.record(message.topic.value, bytes(payload), perf, wall)
    except aiomqtt.MqttError as exc:
        recorder.fail(exc)


@asynccontextmanager
async def mqtt_client(broker: Broker, name: str) -> AsyncIterator[tuple[aiomqtt.Client, Recorder]]:
    """A clean-session MQTT 3.1.1 client with a task that records everything it receives."""
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        socket_options=CLIENT_SOCKET_OPTIONS,
        identifier=f"bench-{name}-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=MQTT_TIMEOUT_S,
    )
    recorder = Recorder()
    async with client:
        collector = asyncio.create_task(_collect(client, recorder), name=f"collect-{name}")
        try:
            yield client, recorder
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector


async def wait_for(future: asyncio.Future[Arrival], timeout: float, what: str) -> Arrival:
    try:
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        future.cancel()
        raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}") from None


# --- the broker -----------------------------------------------------------------------------------------


class BenchBroker(Broker):
    """The tests' broker; for mosquitto, optionally with ``set_tcp_nodelay true`` in its configuration.

    mosquitto leaves Nagle's algorithm on by default: a small packet it sends to a client that has not
    yet acknowledged the previous one (the client delays its TCP ACKs by up to 40 ms) is held back until
    that ACK. Request/response traffic then measures Linux's delayed-ACK timer, not the system. The
    default here turns it off so that the floor is a floor; ``--broker-nagle`` keeps mosquitto's default.
    (amqtt runs on asyncio, which sets TCP_NODELAY on every connection.)
    """

    def __init__(self, data_dir: Path, *, tcp_nodelay: bool) -> None:
        super().__init__(data_dir, tcp_nodelay=tcp_nodelay)

    def describe(self) -> str:
        if self.kind != "mosquitto":
            return f"{self.version} (asyncio: TCP_NODELAY)"
        nagle = "set_tcp_nodelay true" if self.tcp_nodelay else "set_tcp_nodelay false, mosquitto's default"
        return f"mosquitto {self.version} ({nagle})"


# --- the agent under test --------------------------------------------------------------------------------


class AgentProcess:
    """The agent started the realistic way: ``python -m agent run --config FILE``."""

    def __init__(self, broker: Broker, workdir: Path) -> None:
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "node_id": NODE_ID,
                    "state_dir": str(workdir / "state"),
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "log": {"format": "json", "level": "warning"},
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@asynccontextmanager
async def agent_subprocess(broker: Broker, workdir: Path, probe: Recorder) -> AsyncIterator[None]:
    agent = AgentProcess(broker, workdir)
    agent.start()
    try:
        online = probe.expect(lambda a: a.topic == NODE_TOPIC and a.json()["state"] == "online")
        deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
        # Wait on the message, but notice at once if the agent dies instead of coming online.
        while not online.done():
            if (code := agent.exited()) is not None:
                raise BenchError(f"the agent exited with {code} before coming online:\n{agent.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the agent did not come online:\n{agent.log_tail()}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await asyncio.shield(online)
        online.result()
        yield
        if (code := agent.exited()) is not None:
            raise BenchError(f"the agent exited with {code} during the run:\n{agent.log_tail()}")
    finally:
        await asyncio.to_thread(agent.stop)


@asynccontextmanager
async def agent_in_process(broker: Broker, workdir: Path, probe: Recorder) -> AsyncIterator[None]:
    # Imported here: the subprocess mode must not depend on importing the agent into the benchmark.
    from agent.config import AgentConfig, LogConfig, MqttConfig  # noqa: PLC0415
    from agent.daemon import Agent  # noqa: PLC0415
    from agent.log import configure_logging  # noqa: PLC0415

    configure_logging("console", "warning")
    config = AgentConfig(
        node_id=NODE_ID,
        state_dir=workdir / "state",
        mqtt=MqttConfig(host=broker.host, port=broker.port),
        log=LogConfig(format="console", level="warning"),
    )
    async with Agent(config):
        online = probe.expect(lambda a: a.topic == NODE_TOPIC and a.json()["state"] == "online")
        await wait_for(online, AGENT_READY_TIMEOUT_S, "the in-process agent online")
        yield


# --- one sample ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    total: float  # publish -> validating status arrived (perf_counter)
    first_status: float  # publish -> first status (pending) arrived
    ingress: float  # publish -> the agent decided pending (wall clocks)
    spawn: float  # the agent decided starting -> decided validating
    egress: float  # the agent decided validating -> validating arrived


def desired_document(execution_id: str, generation: int = 1) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": "running"},
        "spec": {
            "command": COMMAND,
            "validation": {"window_s": 60.0, "deadline_s": 300.0},
            "restart": {"policy": "never", "max_restarts": 0, "backoff_s": 1.0, "backoff_max_s": 60.0},
            "stop": {"signal": "SIGTERM", "grace_s": 1.0},
        },
    }


def status_of(execution_id: str, states: frozenset[str] | None = None) -> Predicate:
    topic = f"{PREFIX}/nodes/{NODE_ID}/executions/{execution_id}/status"

    def predicate(arrival: Arrival) -> bool:
        if arrival.topic != topic or not arrival.payload:
            return False
        return states is None or arrival.json()["observed_state"]["state_type"] in states

    return predicate


def node_idle(arrival: Arrival) -> bool:
    if arrival.topic != NODE_TOPIC:
        return False
    document = arrival.json()
    return document["state"] == "online" and not ACTIVE_STATES & set(document["executions"])


def kill_group(pid: int) -> None:
    """SIGKILL the workload's process group (the agent runs each workload as a group leader)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not (yet) a group leader: the process alone, if it is there at all
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    except PermissionError:
        pass


def active_workloads(probe: Recorder) -> set[int]:
    """Pids of the executions whose last status seen says they may still run (for the final clean-up)."""
    last: dict[str, dict[str, Any]] = {}
    for arrival in probe.arrivals:
        if arrival.topic.endswith("/status") and "/executions/" in arrival.topic and arrival.payload:
            with contextlib.suppress(ValueError):
                last[arrival.topic] = arrival.json()
    pids = set()
    for document in last.values():
        reference = str(document.get("compute_reference") or "")
        state = document.get("observed_state", {}).get("state_type")
        if reference.startswith("pid:") and state not in ENDED_STATES:
            pids.add(int(reference.removeprefix("pid:")))
    return pids


async def one_sample(
    client: aiomqtt.Client, probe: Recorder, run_id: str, number: int, pids: set[int]
) -> Sample:
    execution_id = f"bench-{run_id}-{number}"
    payload = json.dumps(desired_document(execution_id)).encode()
    first = probe.expect(status_of(execution_id), probe.next_index)
    validating = probe.expect(status_of(execution_id, frozenset({"validating"})), probe.next_index)
    sent_wall = time.time()
    sent = time.perf_counter()
    await client.publish(
        f"{PREFIX}/nodes/{NODE_ID}/executions/{execution_id}/desired", payload, qos=1, retain=True
    )
    arrived = await wait_for(validating, SAMPLE_TIMEOUT_S, f"{execution_id} validating")
    first_arrival = await wait_for(first, SAMPLE_TIMEOUT_S, f"{execution_id} first status")
    document = arrived.json()
    reference = str(document.get("compute_reference") or "")
    if not reference.startswith("pid:"):
        raise BenchError(f"{execution_id}: validating status without a pid: {reference!r}")
    pid = int(reference.removeprefix("pid:"))
    pids.add(pid)

    # Settle: kill the workload, wait until the agent has reported it ended and says it is idle again.
    mark = probe.next_index
    ended = probe.expect(status_of(execution_id, ENDED_STATES), mark)
    kill_group(pid)
    end = await wait_for(ended, SETTLE_TIMEOUT_S, f"{execution_id} ended")
    await wait_for(probe.expect(node_idle, end.index), SETTLE_TIMEOUT_S, "the node idle again")
    pids.discard(pid)

    statuses = [
        a.json()
        for a in probe.arrivals[first_arrival.index : arrived.index + 1]
        if status_of(execution_id)(a)
    ]
    decided = {d["observed_state"]["state_type"]: parse_time(d["updated_at"]) for d in statuses}
    pending_at = decided.get("pending", decided.get("starting", sent_wall))
    starting_at = decided.get("starting", pending_at)
    validating_at = parse_time(document["updated_at"])
    return Sample(
        total=arrived.perf - sent,
        first_status=first_arrival.perf - sent,
        ingress=pending_at - sent_wall,
        spawn=validating_at - starting_at,
        egress=arrived.wall - validating_at,
    )


# --- the floor -------------------------------------------------------------------------------------------


async def one_way(sender: aiomqtt.Client, receiver: Recorder, topic: str, payload: bytes) -> float:
    """QoS 1 retained publish from ``sender`` -> arrival at the client that records into ``receiver``."""
    marker = uuid.uuid4().hex.encode()
    body = marker + payload
    arrival = receiver.expect(
        lambda a: a.topic == topic and a.payload.startswith(marker), receiver.next_index
    )
    sent = time.perf_counter()
    await sender.publish(topic, body, qos=1, retain=True)
    got = await wait_for(arrival, MQTT_TIMEOUT_S, f"floor message on {topic}")
    return got.perf - sent


def spawn_once() -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(COMMAND)
    elapsed = time.perf_counter() - started
    proc.kill()
    proc.wait()
    return elapsed


def supervised_spawn_once() -> float:
    """The least a supervised spawn can cost: a shell that forks the workload and reports its pid."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'sleep 30 & echo "$!"'], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    proc.wait()
    assert line.strip().isdigit()
    return elapsed


def fsync_once(fd: int, record: bytes) -> float:
    started = time.perf_counter()
    os.write(fd, record)
    os.fsync(fd)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Floor:
    a_to_b: list[float]
    b_to_a: list[float]
    spawn: list[float]
    fsync: list[float]
    supervised_spawn: list[float]

    @property
    def supervised(self) -> float:
        """A reference, not the target's floor: what an agent that keeps exit codes across its own
        crashes must pay at least (a supervisor's fork/exec and report, and two durable commits: the
        decision to spawn is recorded before the spawn, the spawn before `validating` is published)."""
        return self.mqtt + statistics.median(self.supervised_spawn) + 2 * statistics.median(self.fsync)

    @property
    def mqtt(self) -> float:
        return statistics.median(self.a_to_b) + statistics.median(self.b_to_a)

    @property
    def total(self) -> float:
        return self.mqtt + statistics.median(self.spawn) + statistics.median(self.fsync)


async def measure_floor(broker: Broker, workdir: Path, samples: int, payload_size: int) -> Floor:
    a_to_b: list[float] = []
    b_to_a: list[float] = []
    to_b, to_a = f"{FLOOR_TOPIC}/b", f"{FLOOR_TOPIC}/a"
    padding = b"x" * payload_size
    async with (
        mqtt_client(broker, "floor-a") as (client_a, got_a),
        mqtt_client(broker, "floor-b") as (
            client_b,
            got_b,
        ),
    ):
        await client_a.subscribe(to_a, qos=1)
        await client_b.subscribe(to_b, qos=1)
        for _ in range(samples):
            a_to_b.append(await one_way(client_a, got_b, to_b, padding))
            b_to_a.append(await one_way(client_b, got_a, to_a, padding))
        # Leave no retained floor messages behind (the broker is thrown away anyway).
        await client_a.publish(to_b, b"", qos=1, retain=True)
        await client_a.publish(to_a, b"", qos=1, retain=True)
    spawn = [spawn_once() for _ in range(samples)]
    record = json.dumps({"revision": 1, "state": "validating", "padding": "x" * 200}).encode() + b"\n"
    fd = os.open(workdir / "fsync.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fsync = [fsync_once(fd, record) for _ in range(samples)]
    finally:
        os.close(fd)
    supervised = [supervised_spawn_once() for _ in range(samples)]
    return Floor(a_to_b, b_to_a, spawn, fsync, supervised)


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    broker: str
    broker_tcp_nodelay: bool
    mode: str
    samples: list[Sample]
    floor: Floor

    def figures(self) -> dict[str, Any]:
        totals = [s.total for s in self.samples]
        median = statistics.median(totals)
        floor = self.floor
        return {
            "broker": self.broker,
            "broker_tcp_nodelay": self.broker_tcp_nodelay,
            "client_tcp_nodelay": True,
            "mode": self.mode,
            "samples": len(self.samples),
            "desired_to_validating_ms": summary_ms(totals),
            "desired_to_first_status_ms": summary_ms([s.first_status for s in self.samples]),
            "stages_ms": {
                "ingress": summary_ms([s.ingress for s in self.samples]),
                "spawn": summary_ms([s.spawn for s in self.samples]),
                "egress": summary_ms([s.egress for s in self.samples]),
            },
            "floor_ms": {
                "median": round(floor.total * 1000, 3),
                "mqtt_two_one_way": round(floor.mqtt * 1000, 3),
                "mqtt_a_to_b": summary_ms(floor.a_to_b),
                "mqtt_b_to_a": summary_ms(floor.b_to_a),
                "spawn": summary_ms(floor.spawn),
                "fsync": summary_ms(floor.fsync),
            },
            "ratio": round(median / floor.total, 2),
            "target_ratio": 2.0,
            "supervised_floor_ms": {
                "median": round(floor.supervised * 1000, 3),
                "supervised_spawn": summary_ms(floor.supervised_spawn),
            },
            "ratio_to_supervised_floor": round(median / floor.supervised, 2),
        }


def render(figures: dict[str, Any]) -> str:
    total = figures["desired_to_validating_ms"]
    first = figures["desired_to_first_status_ms"]
    stages = figures["stages_ms"]
    floor = figures["floor_ms"]

    def ms(value: float) -> str:
        return f"{value:.2f}"

    lines = [
        f"broker: {figures['broker']}   agent: {figures['mode']}   samples: {figures['samples']}",
        f"desired -> validating   median {ms(total['median'])} ms   p90 {ms(total['p90'])} ms"
        f"   min {ms(total['min'])}   max {ms(total['max'])}",
        f"  desired -> first status (pending)   median {ms(first['median'])} ms",
        f"  stages (agent clock): ingress {ms(stages['ingress']['median'])}"
        f"  spawn {ms(stages['spawn']['median'])}  egress {ms(stages['egress']['median'])} ms (medians)",
        f"floor (2 x mqtt one-way + spawn + fsync)   median {ms(floor['median'])} ms"
        f"  [mqtt {ms(floor['mqtt_two_one_way'])} = {ms(floor['mqtt_a_to_b']['median'])}"
        f" + {ms(floor['mqtt_b_to_a']['median'])}, spawn {ms(floor['spawn']['median'])},"
        f" fsync {ms(floor['fsync']['median'])}]",
        f"ratio {figures['ratio']:.2f} (target <= {figures['target_ratio']:.0f})",
        f"reference: supervised floor (2 x mqtt + sh supervisor reporting a pid + 2 fsyncs)   median "
        f"{ms(figures['supervised_floor_ms']['median'])} ms  [supervised spawn "
        f"{ms(figures['supervised_floor_ms']['supervised_spawn']['median'])}]   "
        f"ratio {figures['ratio_to_supervised_floor']:.2f}",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> Result:
    broker = BenchBroker(workdir / "broker", tcp_nodelay=not args.broker_nagle)
    description = broker.describe()
    await broker.astart()
    pids: set[int] = set()
    try:
        async with mqtt_client(broker, "probe") as (client, probe):
            await client.subscribe(STATUS_FILTER, qos=1)
            await client.subscribe(NODE_TOPIC, qos=1)
            start_agent = agent_in_process if args.in_process else agent_subprocess
            run_id = uuid.uuid4().hex[:6]
            samples: list[Sample] = []
            async with start_agent(broker, workdir, probe):
                try:
                    for number in range(args.warmup + args.samples):
                        sample = await one_sample(client, probe, run_id, number, pids)
                        if number >= args.warmup:
                            samples.append(sample)
                    # The floor, with the agent connected and idle, on the same broker and disk.
                    payload_size = len(json.dumps(desired_document(f"bench-{run_id}-0")))
                    floor = await measure_floor(broker, workdir, args.floor_samples, payload_size)
                finally:
                    for pid in pids | active_workloads(probe):
                        kill_group(pid)
                    pids.clear()
        mode = "in-process" if args.in_process else "subprocess"
        nodelay = broker.kind != "mosquitto" or broker.tcp_nodelay
        return Result(description, nodelay, mode, samples, floor)
    finally:
        for pid in pids:
            kill_group(pid)
        await broker.astop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Median latency desired -> validating against a floor measured in the same run.",
    )
    parser.add_argument("--samples", type=int, default=50, help="measured samples (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="discarded samples first (default 5)")
    parser.add_argument(
        "--floor-samples", type=int, default=100, help="samples of each floor component (default 100)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run the agent in this event loop instead of a subprocess"
    )
    parser.add_argument(
        "--broker-nagle",
        action="store_true",
        help="keep mosquitto's default set_tcp_nodelay false (Nagle on; see bench/README.md)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.warmup < 0 or args.floor_samples < 1:
        parser.error("--samples and --floor-samples must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failures: list[BaseException] = []
    result: Result | None = None
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        try:
            result = asyncio.run(run(args, Path(tmp)))
        except* (BenchError, BrokerError, OSError, aiomqtt.MqttError) as group:
            failures.extend(group.exceptions)
        finally:
            remove_cgroups(Path(tmp) / "state")  # the workloads' cgroups, where the agent made them
    if result is None or failures:
        for error in failures:
            print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    figures = result.figures()
    print(json.dumps(figures) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

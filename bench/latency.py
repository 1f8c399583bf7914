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

By default two brokers run side by side, each with its own agent, sampled in turn (so both see the
same load): a stock mosquitto (``set_tcp_nodelay false``, its default, as most users run it) and one
with ``set_tcp_nodelay true``. ``--broker stock|nodelay`` runs one.

The figures are set against a FLOOR measured in the same run, on each broker: the medians of two MQTT
one-way trips (QoS 1, retained, A -> B and B -> A: the desired document in, the status out), a
``/bin/sh`` that starts ``sleep 30`` and reports its pid (the least a supervised spawn costs), and two
small writes + ``fsync`` in the same temporary directory (the spawn is recorded before it is made, and
before ``validating`` is published). THE floor is that of the nodelay broker: the least the work costs.
Targets: each median <= 2 x the floor (at most 3 x), the stock broker's <= 1.3 x the nodelay one's.
The exit status is 0 whatever the ratios (this is a measurement, not a test), non-zero only if the run
itself failed.

Besides the total, three stages are reported from the status documents' own ``updated_at`` (the agent's
wall clock, the same host's clock as ours): ``ingress`` publish -> the agent decided ``pending``;
``spawn`` that decision -> the agent decided ``validating`` (commit, spawn of the supervisor and the
workload); ``egress`` that decision -> the ``validating`` status arrived (commit, outbox, broker). And
the way out: the workload's process group killed -> its ended status arrived (the supervisor waiting for
its log writers and recording the exit, the agent's watch, a commit, the broker).
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

from agent.tcp import QUICKACK, acknowledge_at_once  # noqa: E402
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
# The benchmark's own clients never let Nagle's algorithm hold a message back, nor delay their ACKs (a
# broker with Nagle on would otherwise hold the next message to them): an instrument must not add stalls
# of its own (see bench/README.md). The ACKs are the agent's own helper (agent/tcp.py).
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
    acknowledge_at_once(client)
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
    """A stock mosquitto (its defaults: no persistence, Nagle on, queues of 1000), or the same with
    ``set_tcp_nodelay true``.

    mosquitto leaves Nagle's algorithm on by default: a small packet it sends to a client that has not
    yet acknowledged the previous one (a client delays its TCP ACKs by up to 40 ms) is held back until
    that ACK. The agent's own socket acknowledges at once (agent/tcp.py); the nodelay broker is the
    reference the stock one is held to. (The tests' broker saves its database after every change, which
    costs milliseconds per retained message: not what users run, so not measured here. amqtt runs on
    asyncio, which sets TCP_NODELAY on every connection.)
    """

    def __init__(self, data_dir: Path, *, tcp_nodelay: bool) -> None:
        super().__init__(data_dir, tcp_nodelay=tcp_nodelay, stock=True)

    def _write_mosquitto_conf(self) -> Path:
        conf = super()._write_mosquitto_conf()
        if self.tcp_nodelay:
            with conf.open("a") as file:
                file.write("set_tcp_nodelay true\n")
        return conf

    def describe(self) -> str:
        if self.kind != "mosquitto":
            return f"{self.version} (asyncio: TCP_NODELAY)"
        nagle = "defaults + set_tcp_nodelay true" if self.tcp_nodelay else "defaults: set_tcp_nodelay false"
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
    exit: float  # the workload killed -> its ended status arrived (the supervisor's end of attempt in it)


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
    killed = time.perf_counter()
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
        exit=end.perf - killed,
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


@dataclass
class FloorMeter:
    """Takes floor samples on one broker whenever asked, so they fall among the agent's samples (the load
    on a shared machine changes by the minute: a floor measured after them would be another machine's)."""

    client_a: aiomqtt.Client
    got_a: Recorder
    client_b: aiomqtt.Client
    got_b: Recorder
    fd: int
    padding: bytes
    floor: Floor = field(default_factory=lambda: Floor([], [], [], [], []))

    async def sample(self, count: int) -> None:
        to_b, to_a = f"{FLOOR_TOPIC}/b", f"{FLOOR_TOPIC}/a"
        record = json.dumps({"revision": 1, "state": "validating", "padding": "x" * 200}).encode() + b"\n"
        for _ in range(count):
            self.floor.a_to_b.append(await one_way(self.client_a, self.got_b, to_b, self.padding))
            self.floor.b_to_a.append(await one_way(self.client_b, self.got_a, to_a, self.padding))
            self.floor.spawn.append(spawn_once())
            self.floor.fsync.append(fsync_once(self.fd, record))
            self.floor.supervised_spawn.append(supervised_spawn_once())


@asynccontextmanager
async def floor_meter(broker: Broker, workdir: Path, payload_size: int) -> AsyncIterator[FloorMeter]:
    to_b, to_a = f"{FLOOR_TOPIC}/b", f"{FLOOR_TOPIC}/a"
    async with (
        mqtt_client(broker, "floor-a") as (client_a, got_a),
        mqtt_client(broker, "floor-b") as (client_b, got_b),
    ):
        await client_a.subscribe(to_a, qos=1)
        await client_b.subscribe(to_b, qos=1)
        fd = os.open(workdir / "fsync.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            yield FloorMeter(client_a, got_a, client_b, got_b, fd, b"x" * payload_size)
        finally:
            os.close(fd)


# --- the run ---------------------------------------------------------------------------------------------

BROKERS = {"stock": False, "nodelay": True}  # name -> mosquitto's set_tcp_nodelay


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
            "mode": self.mode,
            "samples": len(self.samples),
            "desired_to_validating_ms": summary_ms(totals),
            "desired_to_first_status_ms": summary_ms([s.first_status for s in self.samples]),
            "killed_to_ended_status_ms": summary_ms([s.exit for s in self.samples]),
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
            "supervised_floor_ms": {
                "median": round(floor.supervised * 1000, 3),
                "supervised_spawn": summary_ms(floor.supervised_spawn),
            },
            "ratio_to_own_supervised_floor": round(median / floor.supervised, 2),
        }


def combined(results: dict[str, Result]) -> dict[str, Any]:
    """Every broker's figures, and the ratios that matter: each to THE floor (the supervised floor on the
    broker without Nagle, when it ran: the least the work costs), and the stock broker to the other."""
    runs = {name: result.figures() for name, result in results.items()}
    reference = results.get("nodelay") or next(iter(results.values()))
    floor = reference.floor.supervised
    medians = {name: statistics.median(s.total for s in r.samples) for name, r in results.items()}
    ratios = {f"{name}_to_floor": round(m / floor, 2) for name, m in medians.items()}
    if "stock" in medians and "nodelay" in medians:
        ratios["stock_to_nodelay"] = round(medians["stock"] / medians["nodelay"], 2)
    return {
        "runs": runs,
        "floor_ms": round(floor * 1000, 3),
        "floor_from": reference.broker,
        "ratios": ratios,
        "targets": {"to_floor": 2.0, "to_floor_at_most": 3.0, "stock_to_nodelay_at_most": 1.3},
        "client_tcp_nodelay": True,
        "client_tcp_quickack": QUICKACK is not None,
    }


def render_run(figures: dict[str, Any]) -> list[str]:
    total = figures["desired_to_validating_ms"]
    first = figures["desired_to_first_status_ms"]
    stages = figures["stages_ms"]
    floor = figures["floor_ms"]
    supervised = figures["supervised_floor_ms"]

    def ms(value: float) -> str:
        return f"{value:.2f}"

    return [
        f"broker: {figures['broker']}   agent: {figures['mode']}   samples: {figures['samples']}",
        f"  desired -> validating   median {ms(total['median'])} ms   p90 {ms(total['p90'])} ms"
        f"   min {ms(total['min'])}   max {ms(total['max'])}",
        f"  desired -> first status (pending)   median {ms(first['median'])} ms",
        f"  workload killed -> ended status   median {ms(figures['killed_to_ended_status_ms']['median'])} ms"
        f"   p90 {ms(figures['killed_to_ended_status_ms']['p90'])} ms",
        f"  stages (agent clock): ingress {ms(stages['ingress']['median'])}"
        f"  spawn {ms(stages['spawn']['median'])}  egress {ms(stages['egress']['median'])} ms (medians)",
        f"  its floor: supervised {ms(supervised['median'])} ms (2 x mqtt one-way"
        f" {ms(floor['mqtt_two_one_way'])} = {ms(floor['mqtt_a_to_b']['median'])}"
        f" + {ms(floor['mqtt_b_to_a']['median'])}, sh supervisor reporting a pid"
        f" {ms(supervised['supervised_spawn']['median'])}, 2 x fsync {ms(floor['fsync']['median'])});"
        f" bare (Popen {ms(floor['spawn']['median'])}, 1 fsync) {ms(floor['median'])} ms",
    ]


def render(figures: dict[str, Any]) -> str:
    lines: list[str] = []
    for run_figures in figures["runs"].values():
        lines.extend(render_run(run_figures))
    ratios = figures["ratios"]
    targets = figures["targets"]
    lines.append(
        f"floor {figures['floor_ms']:.2f} ms (supervised, on {figures['floor_from']}; instruments with"
        f" TCP_NODELAY{' and TCP_QUICKACK' if figures['client_tcp_quickack'] else ''})"
    )
    for name in figures["runs"]:
        lines.append(
            f"ratio {name} / floor {ratios[f'{name}_to_floor']:.2f}"
            f" (target <= {targets['to_floor']:.0f}, at most {targets['to_floor_at_most']:.0f})"
        )
    if "stock_to_nodelay" in ratios:
        lines.append(
            f"ratio stock / nodelay {ratios['stock_to_nodelay']:.2f}"
            f" (at most {targets['stock_to_nodelay_at_most']})"
        )
    return "\n".join(lines)


@dataclass
class Setup:
    """One broker with its probe and its agent, samples taken in turn with the other brokers'."""

    name: str
    broker: BenchBroker
    client: aiomqtt.Client
    probe: Recorder
    workdir: Path
    meter: FloorMeter
    pids: set[int] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)


@asynccontextmanager
async def setup(
    name: str, tcp_nodelay: bool, args: argparse.Namespace, workdir: Path
) -> AsyncIterator[Setup]:
    broker = BenchBroker(workdir / "broker", tcp_nodelay=tcp_nodelay)
    await broker.astart()
    pids: set[int] = set()
    try:
        async with mqtt_client(broker, "probe") as (client, probe):
            await client.subscribe(STATUS_FILTER, qos=1)
            await client.subscribe(NODE_TOPIC, qos=1)
            start_agent = agent_in_process if args.in_process else agent_subprocess
            payload_size = len(json.dumps(desired_document("bench-000000-0")))
            async with (
                start_agent(broker, workdir, probe),
                floor_meter(broker, workdir, payload_size) as meter,
            ):
                here = Setup(name, broker, client, probe, workdir, meter, pids)
                try:
                    yield here
                finally:
                    for pid in pids | active_workloads(probe):
                        kill_group(pid)
                    pids.clear()
    finally:
        for pid in pids:
            kill_group(pid)
        await broker.astop()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Result]:
    names = ["stock", "nodelay"] if args.broker == "both" else [args.broker]
    run_id = uuid.uuid4().hex[:6]
    for name in names:
        (workdir / name).mkdir()
    async with contextlib.AsyncExitStack() as stack:
        setups = [
            await stack.enter_async_context(setup(name, BROKERS[name], args, workdir / name))
            for name in names
        ]
        # In turn, sample by sample, with the floor's samples among them: each figure, and the floor, see
        # the same load on this shared machine.
        rounds = args.warmup + args.samples
        floor_per_round = math.ceil(args.floor_samples / args.samples)
        for number in range(rounds):
            for here in setups:
                sample = await one_sample(here.client, here.probe, run_id, number, here.pids)
                if number >= args.warmup:
                    here.samples.append(sample)
                    await here.meter.sample(floor_per_round)
        mode = "in-process" if args.in_process else "subprocess"
        return {
            here.name: Result(
                here.broker.describe(),
                here.broker.kind != "mosquitto" or here.broker.tcp_nodelay,
                mode,
                here.samples,
                here.meter.floor,
            )
            for here in setups
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Median latency desired -> validating on a stock mosquitto and on one with "
        "set_tcp_nodelay true, against a floor measured in the same run.",
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
        "--broker",
        choices=["both", *BROKERS],
        default="both",
        help="stock: mosquitto's defaults (set_tcp_nodelay false); nodelay: set_tcp_nodelay true;"
        " both (default): one agent on each, sampled in turn",
    )
    parser.add_argument(
        "--broker-nagle",
        action="store_const",
        dest="broker",
        const="stock",
        help="the same as --broker stock",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.warmup < 0 or args.floor_samples < 1:
        parser.error("--samples and --floor-samples must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failures: list[BaseException] = []
    results: dict[str, Result] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        try:
            results = asyncio.run(run(args, Path(tmp)))
        except* (BenchError, BrokerError, OSError, aiomqtt.MqttError) as group:
            failures.extend(group.exceptions)
        finally:
            for name in BROKERS:  # the workloads' cgroups, where each agent made them
                remove_cgroups(Path(tmp) / name / "state")
    if results is None or failures:
        for error in failures:
            print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    figures = combined(results)
    print(json.dumps(figures) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

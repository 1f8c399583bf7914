"""Logs on request under load: follow latency and the agent's CPU with 0, 1 and 8 follows; the log cap.

    .venv/bin/python -m bench.logs [--rate-mb 10] [--seconds 8]

Starts mosquitto (tests.support.broker) and the agent as a subprocess (the CLI, as bench/restart.py does),
then one workload that writes ``--rate-mb`` MB/s of 1 KiB lines, each starting with the wall-clock time
it was written. In the same run, three phases of ``--seconds`` each on that same workload:

- no follow (the baseline): the agent's CPU (user + system of its process, over the phase, in % of a core);
- one follow, then eight: the agent's CPU, and for every whole line received in the phase its latency,
  the receive time less the time written in the line (p50 and p99), measured by one MQTT client in this
  process subscribed to the replies; follows that ended early (an error reply) are counted.

Then the log cap (bench/logcap.py): bytes on disk against ``max_bytes x (1 + keep)`` at 45 MB/s, for
the agent's writer and the copy-then-truncate it replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiomqtt
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import logcap  # noqa: E402
from bench.restart import NODE, PREFIX, Agent, kill_workloads  # noqa: E402
from tests.support.broker import Broker  # noqa: E402

LINE = 1024
# Writes RATE bytes/s of LINE-byte lines "<time.time()> xxx...\n", in a burst every 10 ms, for ever.
WRITER = f"""
import os, sys, time
rate = float(sys.argv[1])
start = time.monotonic()
sent = 0
while True:
    due = rate * (time.monotonic() - start)
    lines = []
    while sent < due:
        head = f"{{time.time():.6f}} "
        lines.append(head + "x" * ({LINE} - 1 - len(head)) + "\\n")
        sent += {LINE}
    if lines:
        os.write(1, "".join(lines).encode())
    time.sleep(0.01)
"""


@dataclass
class Followed:
    """What one follow's replies said, for the phase under way."""

    rest: str = ""
    latencies: list[float] = field(default_factory=list)
    error: str | None = None
    ended: bool = False


@dataclass
class Phase:
    follows: int
    cpu_percent: float
    latencies_ms: list[float]
    errors: list[str]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agent_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def wait_state(client: aiomqtt.Client, execution: str, state: str) -> None:
    topic = f"{PREFIX}/nodes/{NODE}/executions/{execution}/status"
    async with asyncio.timeout(60):
        async for message in client.messages:
            if message.topic.value != topic or not isinstance(message.payload, bytes) or not message.payload:
                continue
            if json.loads(message.payload)["observed_state"]["state_type"] == state:
                return


class Receiver:
    """Files every reply's lines' latencies under the follow they belong to."""

    def __init__(self) -> None:
        self.followed: dict[str, Followed] = {}
        self.measuring = False
        self.lock = threading.Lock()

    def handle(self, topic: str, payload: bytes, now: float) -> None:
        with self.lock:
            followed = self.followed.get(topic.rpartition("/")[2])
            if followed is None:
                return
            reply = json.loads(payload)
            if reply["error"] and followed.error is None:
                followed.error = reply["error"]
            followed.ended = followed.ended or reply["eof"]
            *lines, followed.rest = (followed.rest + reply["data"]).split("\n")
            if not self.measuring:
                return
            for line in lines:
                try:
                    followed.latencies.append((now - float(line.split(" ", 1)[0])) * 1000)
                except ValueError:
                    continue  # the first, partial line of the tail

    async def run(self, client: aiomqtt.Client) -> None:
        """Through this process's own MQTT client (when mosquitto_sub is not installed)."""
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                self.handle(message.topic.value, message.payload, time.time())

    def read(self, lines: IO[bytes]) -> None:
        """From ``mosquitto_sub -v`` (a C client: Python's paho reads 64 KiB messages about 2.5 times
        slower, and would measure itself rather than the agent). One message a line: topic, space, JSON."""
        for line in lines:
            topic, _, payload = line.rstrip(b"\n").partition(b" ")
            self.handle(topic.decode(), payload, time.time())


async def phase(
    client: aiomqtt.Client,
    receiver: Receiver,
    agent: psutil.Process,
    *,
    follows: int,
    seconds: float,
    tag: str,
) -> Phase:
    followed = {f"{tag}-{i}": Followed() for i in range(follows)}
    receiver.followed = followed
    requests = f"{PREFIX}/nodes/{NODE}/logs/request"
    for request_id in followed:
        request = {
            "request_id": request_id,
            "execution_id": "w",
            "follow": True,
            "follow_s": 3600,
            "tail_bytes": 0,
        }
        await client.publish(requests, json.dumps(request), qos=1)
    await asyncio.sleep(1.0)  # warm-up: the follows reach the end of the log
    cpu0 = agent_cpu(agent)
    receiver.measuring = True
    await asyncio.sleep(seconds)  # the phase: measured as it is, whatever happens in it
    receiver.measuring = False
    cpu1 = agent_cpu(agent)
    for request_id in followed:
        await client.publish(requests, json.dumps({"request_id": request_id, "cancel": True}), qos=1)
    await asyncio.sleep(1.0)  # the cancels land before the next phase
    return Phase(
        follows,
        (cpu1 - cpu0) / seconds * 100,
        [x for f in followed.values() for x in f.latencies],
        [f.error for f in followed.values() if f.error],
    )


def _mosquitto_sub(broker: Broker, receiver: Receiver) -> subprocess.Popen[bytes] | None:
    """The follower client: mosquitto_sub subscribed to the replies, read by a thread; None without it."""
    program = shutil.which("mosquitto_sub")
    if program is None:
        return None
    topic = f"{PREFIX}/nodes/{NODE}/logs/+"
    command = [program, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-v", "-t", topic]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    threading.Thread(target=receiver.read, args=(process.stdout,), daemon=True).start()
    time.sleep(0.5)  # its SUBACK; a measurement pause (the first phase has no follow)
    return process


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate-mb", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    # Without persistence: the tests' broker saves its database after every change (autosave_on_changes),
    # which holds QoS 1 deliveries of 64 KiB replies to about 60 a second, a sixth of the 10 MB/s here.
    broker = Broker(tmp / "broker", stock=True)
    broker.start()
    agent = Agent(broker, tmp / "agent")
    results: list[Phase] = []
    try:
        agent.start()
        assert agent.proc is not None
        process = psutil.Process(agent.proc.pid)
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe(f"{PREFIX}/nodes/{NODE}/executions/w/status", qos=1)
            if shutil.which("mosquitto_sub") is None:
                await client.subscribe(f"{PREFIX}/nodes/{NODE}/logs/+", qos=1)
            desired = {
                "execution_id": "w",
                "generation": 1,
                "desired_state": {"state_type": "running"},
                "spec": {
                    "command": [sys.executable, "-c", WRITER, str(args.rate_mb * 1e6)],
                    "validation": {"window_s": 0.5},
                },
            }
            await client.publish(
                f"{PREFIX}/nodes/{NODE}/executions/w/desired", json.dumps(desired), qos=1, retain=True
            )
            await wait_state(client, "w", "running")
            receiver = Receiver()
            follower = _mosquitto_sub(broker, receiver)
            reading = asyncio.create_task(receiver.run(client)) if follower is None else None
            try:
                for n, follows in enumerate((0, 1, 8)):
                    results.append(
                        await phase(
                            client, receiver, process, follows=follows, seconds=args.seconds, tag=f"p{n}"
                        )
                    )
            finally:
                if reading is not None:
                    reading.cancel()
                if follower is not None:
                    follower.kill()
                    follower.wait()
    finally:
        agent.kill()
        kill_workloads(tmp)
        broker.stop()
    baseline = results[0].cpu_percent
    client_name = "mosquitto_sub" if shutil.which("mosquitto_sub") else "aiomqtt in this process"
    print(f"workload: {args.rate_mb:g} MB/s of {LINE}-byte lines; phases of {args.seconds:g} s, same run")
    print(f"broker: mosquitto without persistence; follower client: {client_name}; load: {os.getloadavg()}")
    for result in results:
        line = f"{result.follows} follow(s): agent CPU {result.cpu_percent:5.1f} % of a core"
        if result.follows:
            lat = result.latencies_ms
            line += (
                f" (+{result.cpu_percent - baseline:.1f} points over no follow)   latency written -> received p50 {percentile(lat, 0.5):.0f} ms"
                f"  p99 {percentile(lat, 0.99):.0f} ms  ({len(lat)} lines)"
            )
            if result.errors:
                line += f"   {len(result.errors)} ended early: {result.errors[0]}"
        else:
            line += "   (baseline: the same workload, no follow)"
        print(line, flush=True)
    print("log cap at 45 MB/s (bench/logcap.py), bound 10 MiB x (1 + 3):")
    logcap.run(["native", "segments", "copytruncate"], 45.0, 4.0, 10 * 1024 * 1024, 3)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

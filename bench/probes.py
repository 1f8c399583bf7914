"""Probe cost: the agent's CPU with N running workloads, with and without a probe on each.

    .venv/bin/python -m bench.probes [--workloads 500] [--period 2.0] [--seconds 10] [--kind http|tcp|exec]

For each case the agent runs as a subprocess (CLI) against mosquitto, N `sleep` workloads are brought to
`running`, and the agent's CPU time (user + system, psutil) is measured over a steady window. The
baseline is the same N workloads without probes, measured in the same run.
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
from typing import Any

import aiomqtt
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.restart import Agent, kill_workloads  # noqa: E402
from tests.support.broker import Broker  # noqa: E402

NODE = "bench-node"
PREFIX = "reconcile/v1"


async def serve_http() -> tuple[asyncio.Server, int]:
    """A tiny HTTP/1.0 server answering 200, for http probes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def probe_spec(kind: str, port: int, period: float) -> dict[str, Any] | None:
    common = {"period_s": period, "timeout_s": 1.0, "failure_threshold": 3}
    if kind == "http":
        return {"http": {"url": f"http://127.0.0.1:{port}/"}, **common}
    if kind == "tcp":
        return {"tcp": {"host": "127.0.0.1", "port": port}, **common}
    if kind == "exec":
        return {"exec": {"command": ["true"]}, **common}
    return None


async def run_case(
    broker: Broker, workdir: Path, count: int, probe: dict[str, Any] | None, seconds: float
) -> float:
    """CPU percent of the agent over ``seconds`` with ``count`` running workloads."""
    agent = Agent(broker, workdir)
    agent.start()
    try:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe(f"{PREFIX}/nodes/{NODE}/status", qos=1)
            for i in range(count):
                spec: dict[str, Any] = {"command": ["sleep", "600"], "validation": {"window_s": 0.5}}
                if probe is not None:
                    spec["probe"] = probe
                document = {
                    "execution_id": f"w{i}",
                    "generation": 1,
                    "desired_state": {"state_type": "running"},
                    "spec": spec,
                }
                topic = f"{PREFIX}/nodes/{NODE}/executions/w{i}/desired"
                await client.publish(topic, json.dumps(document), qos=1, retain=True)
            async with asyncio.timeout(300):
                async for message in client.messages:
                    status = json.loads(message.payload) if isinstance(message.payload, bytes) else {}
                    if status.get("executions", {}).get("running", 0) == count:
                        break
        assert agent.proc is not None
        process = psutil.Process(agent.proc.pid)
        await asyncio.sleep(2.0)  # settle after the start burst: a measurement pause, not synchronisation
        before, started = process.cpu_times(), time.perf_counter()
        await asyncio.sleep(seconds)
        after, elapsed = process.cpu_times(), time.perf_counter() - started
        used = (after.user - before.user) + (after.system - before.system)
        return 100.0 * used / elapsed
    finally:
        agent.kill()
        kill_workloads(workdir)
        # Retained desired documents of this case must not reach the next case's agent.
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for i in range(count):
                await client.publish(
                    f"{PREFIX}/nodes/{NODE}/executions/w{i}/desired", b"", qos=1, retain=True
                )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kind", choices=["http", "tcp", "exec"], default="http")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    broker = Broker(tmp / "broker")
    broker.start()
    server, port = await serve_http()
    try:
        baseline, probed = [], []
        for round_ in range(args.rounds):
            baseline.append(
                await run_case(broker, tmp / f"plain{round_}", args.workloads, None, args.seconds)
            )
            spec = probe_spec(args.kind, port, args.period)
            probed.append(await run_case(broker, tmp / f"probed{round_}", args.workloads, spec, args.seconds))
    finally:
        server.close()
        broker.stop()
    figures = {
        "workloads": args.workloads,
        "probe": args.kind,
        "period_s": args.period,
        "checks_per_s": args.workloads / args.period,
        "cpu_percent_without_probes": statistics.median(baseline),
        "cpu_percent_with_probes": statistics.median(probed),
    }
    figures["cpu_percent_per_100_checks_per_s"] = (
        (figures["cpu_percent_with_probes"] - figures["cpu_percent_without_probes"])
        / figures["checks_per_s"]
        * 100
    )
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"broker: {broker.kind}   workloads: {args.workloads}   probe: {args.kind} every {args.period} s")
    print(f"agent CPU without probes   median {figures['cpu_percent_without_probes']:.1f} % of one core")
    print(
        f"agent CPU with probes      median {figures['cpu_percent_with_probes']:.1f} % of one core   "
        f"({figures['checks_per_s']:.0f} checks/s)"
    )
    print(f"cost: {figures['cpu_percent_per_100_checks_per_s']:.2f} % of a core per 100 checks/s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

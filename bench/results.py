"""Results: time from a workload's exit to `completed` for a 100 MB output directory, local and S3.

    .venv/bin/python -m bench.results [--rounds 5] [--mb 100] [--json]

Starts mosquitto (tests.support.broker), an S3 server (`rclone serve s3`, tests.support.s3) and the agent
in this process. Each round runs a batch job that copies a prepared 100 MB directory (half random bytes,
half text that compresses well, in 1 MiB files) into its RECONCILE_OUTPUT_DIR and exits 0, once with the
`local` publisher and once with `s3`. The figure is the time between the agent's decision on the exit
(the `updated_at` of the `publishing results` revision) and its decision `completed` (the `updated_at`
of that revision): packing, fsync, the upload and the decisions around them.

The baseline, measured in the same run on the same data and the same server: `tar czf` of the prepared
directory (for local), and `tar czf` plus a plain boto3 `upload_file` of the archive (for S3). The
execution is deleted after each round, so every round starts from the same disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import AgentConfig, LogConfig, MqttConfig, PublishersConfig, S3PublisherConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.log import configure_logging  # noqa: E402
from agent.protocol import rfc3339  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.mqtt import Probe  # noqa: E402
from tests.support.s3 import BUCKET, KEY_ID, SECRET, S3Server, s3_server  # noqa: E402

NODE = "bench-node"
PREFIX = "reconcile/v1"
MIB = 1024 * 1024
TEXT = b"".join(f"line {n:08d}: the quick brown fox jumps over the lazy dog\n".encode() for n in range(20000))


def prepare(directory: Path, megabytes: int) -> None:
    directory.mkdir(parents=True)
    for n in range(megabytes):
        data = os.urandom(MIB) if n % 2 == 0 else (TEXT * (MIB // len(TEXT) + 1))[:MIB]
        (directory / f"part-{n:04d}.bin").write_bytes(data)


def ts(value: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(value).timestamp()


def status_topic(eid: str) -> str:
    return f"{PREFIX}/nodes/{NODE}/executions/{eid}/status"


def desired_topic(eid: str) -> str:
    return f"{PREFIX}/nodes/{NODE}/executions/{eid}/desired"


async def one_run(probe: Probe, eid: str, source: Path, publisher: dict[str, Any]) -> float:
    command = ["sh", "-c", f'cp -r {source}/. "$RECONCILE_OUTPUT_DIR"/']
    document = {
        "execution_id": eid,
        "generation": 1,
        "desired_state": {"state_type": "running"},
        "spec": {
            "command": command,
            "restart": {"policy": "never"},
            "validation": {"window_s": 60.0, "deadline_s": 600.0},
            "publisher": publisher,
        },
    }
    mark = probe.mark()
    await probe.publish(desired_topic(eid), document, retain=True)
    topic = status_topic(eid)
    done = await probe.wait_for(
        lambda m: (
            m.topic == topic
            and bool(m.payload)
            and m.json()["observed_state"]["state_type"] in ("completed", "failed")
        ),
        300,
        after=mark,
    )
    final = done.json()
    if final["observed_state"]["state_type"] != "completed":
        raise RuntimeError(f"{eid}: {final['observed_state']['message']}")
    publishing = next(
        m.json()
        for m in probe.messages_on(topic)
        if m.index >= mark and m.payload and m.json()["observed_state"]["message"] == "publishing results"
    )
    elapsed = ts(final["updated_at"]) - ts(publishing["updated_at"])
    await probe.publish(desired_topic(eid), b"", retain=True)
    await probe.wait_for(lambda m: m.topic == topic and not m.payload, 60, after=mark)
    return elapsed


def baseline(source: Path, workdir: Path, s3: S3Server | None) -> float:
    archive = workdir / "baseline.tar.gz"
    started = time.perf_counter()
    subprocess.run(["tar", "czf", str(archive), "-C", str(source), "."], check=True)
    if s3 is not None:
        s3.client().upload_file(str(archive), BUCKET, "baseline/baseline.tar.gz")
    elapsed = time.perf_counter() - started
    archive.unlink()
    return elapsed


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


async def main(rounds: int, megabytes: int, as_json: bool) -> int:
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        work = Path(tmp)
        source = work / "data"
        prepare(source, megabytes)
        (work / "key-id").write_text(KEY_ID)
        (work / "secret").write_text(SECRET)
        broker = Broker(work / "broker")
        broker.start()
        try:
            with s3_server(work / "s3") as s3:
                config = AgentConfig(
                    node_id=NODE,
                    state_dir=work / "state",
                    mqtt=MqttConfig(host=broker.host, port=broker.port),
                    log=LogConfig(format="console", level="warning"),
                    publishers=PublishersConfig(
                        s3=S3PublisherConfig(
                            access_key_id_file=work / "key-id", secret_access_key_file=work / "secret"
                        )
                    ),
                )
                results: dict[str, list[float]] = {
                    "local": [],
                    "local_baseline": [],
                    "s3": [],
                    "s3_baseline": [],
                }
                async with Agent(config), Probe(broker.host, broker.port) as probe:
                    await probe.subscribe(f"{PREFIX}/nodes/{NODE}/executions/+/status")
                    s3_publisher = {"type": "s3", "bucket": BUCKET, "endpoint": s3.endpoint}
                    for n in range(rounds):
                        results["local"].append(await one_run(probe, f"local-{n}", source, {"type": "local"}))
                        results["local_baseline"].append(
                            await asyncio.to_thread(baseline, source, work, None)
                        )
                        results["s3"].append(await one_run(probe, f"s3-{n}", source, s3_publisher))
                        results["s3_baseline"].append(await asyncio.to_thread(baseline, source, work, s3))
        finally:
            broker.stop()
    report = {name: summary(values) for name, values in results.items()}
    report["ratio_local"] = {
        "value": round(report["local"]["median_s"] / report["local_baseline"]["median_s"], 2)
    }
    report["ratio_s3"] = {"value": round(report["s3"]["median_s"] / report["s3_baseline"]["median_s"], 2)}
    if as_json:
        print(json.dumps({"rounds": rounds, "megabytes": megabytes, "at": rfc3339(time.time()), **report}))
        return 0
    print(f"results: {megabytes} MiB output directory (half random, half text), {rounds} rounds, medians")
    print(f"  local  agent exit -> completed  {report['local']['median_s']:7.3f} s")
    print(f"         tar czf                  {report['local_baseline']['median_s']:7.3f} s")
    print(f"         ratio                    {report['ratio_local']['value']:7.2f}")
    print(f"  s3     agent exit -> completed  {report['s3']['median_s']:7.3f} s")
    print(f"         tar czf + upload_file    {report['s3_baseline']['median_s']:7.3f} s")
    print(f"         ratio                    {report['ratio_s3']['value']:7.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="size of the output directory in MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.rounds, args.mb, args.json)))

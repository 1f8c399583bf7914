"""Workload logs through the real agent: full stdout/stderr on disk, rotated at max_bytes keeping `keep`
older files, and gone with the execution when it is deleted.

The agent's own rotator scans every 5 s; the test runs a second one on the same directory every 20 ms
(rotations are serialised in the process, so the two never interleave). The workload writes in bursts
that the test releases one at a time, each larger than max_bytes, so every rotation is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from agent.config import WorkloadLogsConfig
from agent.executors.logs import rotate_forever
from tests.support.agent import StatusLog, config_for, desired, desired_topic, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
MAX_BYTES = 4096
KEEP = 2

# Burst n (1..3): 5000 bytes of the digit n on stdout (and one 5000-byte burst on stderr with the first);
# then a short last chunk, and exit 0. Each burst waits for the file go-n in the directory given.
WORKLOAD = """
import os, sys, time
def wait(n):
    while not os.path.exists(os.path.join(sys.argv[1], f"go-{n}")):
        time.sleep(0.005)
for n in (1, 2, 3):
    wait(n)
    os.write(1, str(n).encode() * 4999 + b"\\n")
    if n == 1:
        os.write(2, b"e" * 4999 + b"\\n")
wait(4)
os.write(1, b"the end\\n" * 125)
"""
BURST = [str(n).encode() * 4999 + b"\n" for n in (1, 2, 3)]
LAST = b"the end\n" * 125


def rotated_files(run_dir: Path, stream: str) -> list[str]:
    return sorted(p.name for p in run_dir.glob(f"{stream}.*") if not p.name.endswith(".tmp"))


async def test_logs_rotate_keep_at_most_keep_files_and_go_with_the_execution(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    config = config_for(broker, state_dir).model_copy(
        update={"workload_logs": WorkloadLogsConfig(max_bytes=MAX_BYTES, keep=KEEP)}
    )
    signals = tmp_path / "signals"
    signals.mkdir()
    execution = "chatty"
    log = StatusLog(probe, NODE, execution)
    await probe.subscribe(log.topic)
    async with running_agent(config) as agent:
        root = agent.runtime.executor.root
        run_dir = root / execution
        stdout = run_dir / "stdout.log"
        rotator = asyncio.create_task(rotate_forever(root, MAX_BYTES, KEEP, interval_s=0.02))
        try:
            await probe.publish(
                desired_topic(NODE, execution),
                desired(execution, command=[sys.executable, "-c", WORKLOAD, str(signals)]),
                retain=True,
            )
            await log.wait_state("running")
            for n in (1, 2, 3):
                (signals / f"go-{n}").touch()
                # Rotated as soon as a scan sees it past max_bytes: the live file starts again from 0 and
                # the burst is the newest rotated file.
                await wait_until(
                    lambda n=n: (
                        (stdout.with_name("stdout.log.1").exists())
                        and stdout.with_name("stdout.log.1").read_bytes() == BURST[n - 1]
                        and stdout.stat().st_size == 0
                    ),
                    10,
                    what=f"burst {n} rotated",
                )
                assert rotated_files(run_dir, "stdout.log") == [
                    f"stdout.log.{i}" for i in range(1, min(n, KEEP) + 1)
                ]
            # The oldest burst fell off; the newer ones shifted up.
            assert (run_dir / "stdout.log.2").read_bytes() == BURST[1]
            assert (run_dir / "stderr.log.1").read_bytes() == b"e" * 4999 + b"\n"
            assert (run_dir / "stderr.log").read_bytes() == b""

            (signals / "go-4").touch()
            done = await log.wait_state("completed")
            # The writer kept appending at the new end: the live file is the last chunk alone, no hole.
            assert stdout.read_bytes() == LAST
            assert rotated_files(run_dir, "stdout.log") == ["stdout.log.1", "stdout.log.2"]
            # run_output: the end of the stream, whatever rotation did before it.
            tail = done["run_output"]["stdout"].encode()
            assert tail.endswith(LAST)
            assert (BURST[2] + LAST).endswith(tail)
            assert tail == (BURST[2] + LAST)[-4096:]
            assert done["run_output"]["exit_code"] == 0

            # Deleting the execution removes its directory, rotated files and all.
            mark = probe.mark()
            await probe.publish(desired_topic(NODE, execution), b"", retain=True)
            await probe.wait_for(
                lambda m: m.topic == log.topic and m.payload == b"", after=mark, what="status cleared"
            )
            await wait_until(lambda: not run_dir.exists(), 10, what="execution directory removed")
            assert list(root.iterdir()) == []
            assert not rotator.done()
        finally:
            rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rotator

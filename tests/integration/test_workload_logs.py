"""Workload logs through the real agent: the supervisor beside each workload (supervisor.c, or supervisor.sh's
writers) keeps every
stream within max_bytes x (1 + keep) in segments named by their offset, reads across them give the whole
retained log in order, the workload writes on while the agent is down, and the logs go with the execution.

The workload writes in bursts that the test releases one at a time, so each listing is deterministic.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig, WorkloadLogsConfig
from agent.executors import native
from agent.streams import read_range, segments
from tests.support.agent import StatusLog, config_for, desired, desired_topic, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
MAX_BYTES = 4096
KEEP = 2

# Burst n (1..3): 5000 bytes of the digit n on stdout (and one 5000-byte burst on stderr with the first);
# then a short last chunk with no newline, and exit 0. Each burst waits for the file go-n in the directory given.
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
os.write(1, b"the end" * 100)
"""
BURST = [str(n).encode() * 4999 + b"\n" for n in (1, 2, 3)]
LAST = b"the end" * 100

# Waits for go-1, then writes 24 MiB as fast as it can (far beyond the bound) and exits 0.
FLOOD = """
import os, sys, time
while not os.path.exists(os.path.join(sys.argv[1], "go-1")):
    time.sleep(0.005)
block = bytes(range(256)) * 256
for _ in range(384):
    os.write(1, block)
os.write(1, b"done")
"""
FLOOD_BYTES = 384 * 65536 + 4
FLOOD_SEGMENT = 1024 * 1024


def offsets(run_dir: Path, stream: str) -> list[int]:
    return [s.offset for s in segments(run_dir, stream)]


def end(run_dir: Path) -> int:
    first, data = read_range(run_dir, "stdout", 0, 1 << 20)
    return first + len(data)


def on_disk(run_dir: Path) -> int:
    total = 0
    for stream in ("stdout", "stderr"):
        for s in segments(run_dir, stream):
            try:
                total += s.path.stat().st_size
            except FileNotFoundError:
                continue
    return total


async def setting_up(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path, *, max_bytes: int, execution: str
) -> tuple[AgentConfig, Path, StatusLog]:
    """The agent's configuration with segments of ``max_bytes``, the workload's signal directory, and the
    status log of ``execution``, subscribed."""
    config = config_for(broker, state_dir).model_copy(
        update={"workload_logs": WorkloadLogsConfig(max_bytes=max_bytes, keep=KEEP)}
    )
    signals = tmp_path / "signals"
    signals.mkdir()
    log = StatusLog(probe, NODE, execution)
    await probe.subscribe(log.topic)
    return config, signals, log


@pytest.fixture(params=["native", "shell"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The native supervisor, or the shell supervisor of a node where none can be built (no compiler,
    nothing cached)."""
    if request.param == "native":
        request.getfixturevalue("native_supervisor")
    else:
        monkeypatch.setenv("CC", "no-such-compiler")
        monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "empty-cache"))
    return str(request.param)


async def test_logs_stay_in_keep_segments_read_in_order_and_go_with_the_execution(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path, writer: str
) -> None:
    execution = "chatty"
    config, signals, log = await setting_up(
        broker, probe, state_dir, tmp_path, max_bytes=MAX_BYTES, execution=execution
    )
    async with running_agent(config) as agent:
        assert (agent.runtime.executor.native_supervisor is not None) == (writer == "native")
        root = agent.runtime.executor.root
        run_dir = root / execution
        await probe.publish(
            desired_topic(NODE, execution),
            desired(execution, command=[sys.executable, "-c", WORKLOAD, str(signals)]),
            retain=True,
        )
        await log.wait_state("running")
        written = b""
        expected_offsets = {1: [0, 4096], 2: [0, 4096, 8192], 3: [4096, 8192, 12288]}
        for n in (1, 2, 3):
            (signals / f"go-{n}").touch()
            written += BURST[n - 1]
            size = len(written)
            await wait_until(lambda size=size: end(run_dir) == size, 10, what=f"burst {n} on disk")
            # At most KEEP full segments beside the one written; the oldest falls off.
            assert offsets(run_dir, "stdout") == expected_offsets[n]
            first, data = read_range(run_dir, "stdout", 0, 1 << 20)
            assert (first, data) == (expected_offsets[n][0], written[expected_offsets[n][0] :])
        assert read_range(run_dir, "stderr", 0, 1 << 20) == (0, b"e" * 4999 + b"\n")

        (signals / "go-4").touch()
        done = await log.wait_state("completed")
        written += LAST
        # Bytes as written (no newline added to the last chunk), across the segments, from offset 4096 on.
        assert read_range(run_dir, "stdout", 0, 1 << 20) == (4096, written[4096:])
        tail = done["run_output"]["stdout"].encode()
        assert tail == written[-4096:]
        assert done["run_output"]["stdout_truncated"] is True
        assert done["run_output"]["exit_code"] == 0

        # Deleting the execution removes its directory, segments, FIFOs and all.
        mark = probe.mark()
        await probe.publish(desired_topic(NODE, execution), b"", retain=True)
        await probe.wait_for(
            lambda m: m.topic == log.topic and m.payload == b"", after=mark, what="status cleared"
        )
        await wait_until(lambda: not run_dir.exists(), 10, what="execution directory removed")
        assert list(root.iterdir()) == []


async def test_the_bound_holds_and_the_workload_writes_on_while_the_agent_is_down(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    # Segments of 1 MiB: a segment costs the writer a few execs, so 4 KiB ones would slow the flood down.
    execution = "flood"
    config, signals, log = await setting_up(
        broker, probe, state_dir, tmp_path, max_bytes=FLOOD_SEGMENT, execution=execution
    )
    async with running_agent(config) as agent:
        run_dir = agent.runtime.executor.root / execution
        await probe.publish(
            desired_topic(NODE, execution),
            desired(execution, command=[sys.executable, "-c", FLOOD, str(signals)], window_s=0.2),
            retain=True,
        )
        await log.wait_state("running")
    # The agent is gone: nobody but the writer beside the workload looks after its logs.
    (signals / "go-1").touch()
    peak = 0
    async with asyncio.timeout(60):  # a condition, bounded: the workload ended, its writers reached the end
        while not (run_dir / "exit-1").exists():
            peak = max(peak, on_disk(run_dir))
            await asyncio.sleep(0.001)
    assert peak <= 2 * FLOOD_SEGMENT * (
        1 + KEEP
    )  # both streams, each within its bound, whenever a sample was taken
    assert (run_dir / "exit-1").read_text() == "0\n"
    first, data = read_range(run_dir, "stdout", 0, 1 << 26)
    assert first + len(data) == FLOOD_BYTES
    assert first == (FLOOD_BYTES // FLOOD_SEGMENT - KEEP) * FLOOD_SEGMENT
    assert data.endswith(b"done")
    async with running_agent(config):
        done = await log.wait_state("completed")
        assert done["run_output"]["exit_code"] == 0
        assert done["run_output"]["stdout"].endswith("done")


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_NODE = "fixture-node"  # the node id tests/fixtures/make_fixture.py makes its fixtures with


async def test_an_agent_reads_the_run_directories_of_format_2(
    broker: Broker, probe: Probe, tmp_path: Path
) -> None:
    """tests/fixtures/supervisor-format-2 (make_fixture.py, after format 2): tails and logs on request."""
    state_dir = tmp_path / "state"
    shutil.copytree(FIXTURES / "supervisor-format-2", state_dir)
    replies = f"reconcile/v1/nodes/{FIXTURE_NODE}/logs/+"
    await probe.subscribe(replies)
    window = StatusLog(probe, FIXTURE_NODE, "window")
    await probe.subscribe(window.topic)
    async with running_agent(config_for(broker, state_dir, node_id=FIXTURE_NODE)):
        ended = await window.wait_state("failed")  # killed while the agent was away: 137 from exit-1
        assert ended["run_output"]["exit_code"] == 137
        for request_id, execution, stream, text in (
            ("done-out", "done", "stdout", "done\n"),
            ("failed-err", "failed", "stderr", "oops\n"),
        ):
            request = {"request_id": request_id, "execution_id": execution, "stream": stream}
            await probe.publish(f"reconcile/v1/nodes/{FIXTURE_NODE}/logs/request", request)
            last = await probe.wait_for(
                lambda m, r=request_id: m.topic.endswith(f"/logs/{r}") and m.json()["eof"], what=request_id
            )
            got = [m.json() for m in probe.messages_on(last.topic)]
            assert "".join(r["data"] for r in got) == text
            assert got[0]["offset"] == 0

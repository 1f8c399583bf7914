"""Damaged state: the agent recovers exactly or refuses to start with a message naming the file.

It never silently forgets a running workload, and never adopts or signals a process that merely
reuses a dead workload's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import (
    AgentProcess,
    StatusLog,
    desired,
    desired_topic,
    kill_group,
    pid_alive,
    pid_of,
    sleeper,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until, wait_until_sync

pytestmark = pytest.mark.slow

NODE = "node-1"


async def run_workloads(broker: Broker, agent: AgentProcess, count: int = 3) -> dict[str, int]:
    """Start ``count`` sleepers under the agent and return execution id -> pid once all run."""
    agent.start()
    pids = {}
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(f"reconcile/v1/nodes/{NODE}/executions/+/status")
        for i in range(count):
            await probe.publish(
                desired_topic(NODE, f"w{i}"), desired(f"w{i}", command=sleeper()), retain=True
            )
        for i in range(count):
            pids[f"w{i}"] = pid_of(await StatusLog(probe, NODE, f"w{i}").wait_state("running"))
    return pids


def refused(agent: AgentProcess, *names: str) -> str:
    """The agent exited 2 with a short message naming one of ``names``; return the message."""
    code = agent.wait(timeout=20)
    text = agent.log_path.read_text()
    assert code == 2, text[-2000:]
    assert "Traceback" not in text
    assert any(name in text for name in names), text[-2000:]
    return text


async def adopted_or_refused(broker: Broker, agent: AgentProcess, pids: dict[str, int]) -> None:
    """Either the agent refuses to start naming a file, or every live workload is still reported as its own."""
    agent.start()
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
        up = await wait_until(
            lambda: (
                (agent.proc is not None and agent.proc.poll() is not None)
                or any(
                    m.topic.endswith(f"{NODE}/status") and m.json()["state"] == "online"
                    for m in probe.messages
                )
            ),
            timeout=20,
            what="agent online or exited",
        )
        assert up
        if agent.proc is not None and agent.proc.poll() is not None:
            refused(agent, "agent.db", "pid-")
            return
        # Up: every workload still alive must be known, with its own pid, in a state that holds a process.
        for execution_id, pid in pids.items():
            if not pid_alive(pid):
                continue
            log = StatusLog(probe, NODE, execution_id)
            document = await log.wait(lambda d: True, what=f"{execution_id} status")
            assert pid_of(document) == pid
            assert document["observed_state"]["state_type"] in ("running", "validating", "degraded")


@pytest.fixture
def agent(broker: Broker, tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(broker, tmp_path / "agent")
    try:
        yield process
    finally:
        process.kill()
        for pid_file in process.state_dir.glob("executions/*/pid-*"):
            with contextlib.suppress(OSError, ValueError):
                kill_group(int(pid_file.read_text()))


async def test_corrupted_database_is_refused_naming_the_file(broker: Broker, agent: AgentProcess) -> None:
    await run_workloads(broker, agent, 2)
    agent.kill()
    db = agent.state_dir / "agent.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as f:
        f.seek(0)
        f.write(os.urandom(4096))
    agent.start()
    refused(agent, str(db))


async def test_torn_last_write_recovers_or_refuses(broker: Broker, agent: AgentProcess) -> None:
    pids = await run_workloads(broker, agent)
    agent.kill()
    wal = agent.state_dir / "agent.db-wal"
    size = wal.stat().st_size
    assert size > 0
    with wal.open("r+b") as f:
        f.truncate(size - 100)
    await adopted_or_refused(broker, agent, pids)


async def test_removing_the_newest_state_file_recovers_or_refuses(
    broker: Broker, agent: AgentProcess
) -> None:
    pids = await run_workloads(broker, agent)
    agent.kill()
    files = [p for p in agent.state_dir.rglob("*") if p.is_file() and p.suffix != ".lock"]
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    newest.unlink()
    await adopted_or_refused(broker, agent, pids)


@pytest.mark.parametrize(
    "lost", [("agent.db-wal",), ("agent.db-wal", "agent.db-shm")], ids=["wal", "wal+shm"]
)
async def test_losing_the_wal_never_forgets_a_running_workload(
    broker: Broker, agent: AgentProcess, lost: tuple[str, ...]
) -> None:
    await run_workloads(broker, agent, 1)
    with sqlite3.connect(agent.state_dir / "agent.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # Started after the checkpoint: recorded only in the WAL, which is then lost.
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(f"reconcile/v1/nodes/{NODE}/executions/+/status")
        await probe.publish(desired_topic(NODE, "late"), desired("late", command=sleeper()), retain=True)
        await StatusLog(probe, NODE, "late").wait_state("running")
    agent.kill()
    for name in lost:
        (agent.state_dir / name).unlink()
    agent.start()
    if len(lost) == 1:
        refused(agent, "agent.db")  # SQLite itself notices the WAL index without its WAL
    else:
        message = refused(agent, "pid-")  # the store looks whole but misses a live workload
        assert "late" in message


async def test_recycled_pid_is_never_adopted_or_signalled(broker: Broker, agent: AgentProcess) -> None:
    pids = await run_workloads(broker, agent, 1)
    agent.kill()
    # The workload and its supervisor die with no exit status recorded...
    db = agent.state_dir / "agent.db"
    with sqlite3.connect(db) as conn:
        state = json.loads(
            conn.execute("SELECT state FROM executions WHERE execution_id = 'w0'").fetchone()[0]
        )
    os.kill(state["process"]["supervisor_pid"], 9)
    kill_group(pids["w0"])
    wait_until_sync(lambda: not pid_alive(pids["w0"]), timeout=10, what="workload gone")
    # ...and an unrelated process now holds "its" pid (we point the record at it: same effect).
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state["process"]["pid"] = stranger.pid
        state["process"]["supervisor_pid"] = stranger.pid
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE executions SET state = ? WHERE execution_id = 'w0'", (json.dumps(state),))
        agent.start()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            lost = await StatusLog(probe, NODE, "w0").wait_state("lost")
            assert lost["run_output"]["exit_code"] is None
            # Stopping it now must not touch the stranger either.
            topic = desired_topic(NODE, "w0")
            await probe.publish(topic, desired("w0", 2, "stopped", sleeper()), retain=True)
            await StatusLog(probe, NODE, "w0").wait_state("stopped")
        assert stranger.poll() is None, "the stranger was signalled"
    finally:
        stranger.kill()
        stranger.wait()


async def test_full_disk_delays_but_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=False, capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=mount / "state")  # its log outside
    try:
        pids = await run_workloads(broker, agent, 1)
        filler = mount / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/executions/+/status")
            await probe.publish(
                desired_topic(NODE, "w0"), desired("w0", 2, "stopped", sleeper()), retain=True
            )
            # The decision cannot be recorded, so it is not acted on: the workload keeps running.
            agent.wait_logged("cannot record decisions; retrying")
            assert pid_alive(pids["w0"])
            assert agent.proc is not None
            assert agent.proc.poll() is None
            filler.unlink()
            stopped = await StatusLog(probe, NODE, "w0").wait_state("stopped", timeout=20)
        assert stopped["revision"] == 6
        assert not pid_alive(pids["w0"])
    finally:
        agent.kill()
        for pid in pids.values() if "pids" in locals() else ():
            kill_group(pid)
        subprocess.run(["umount", "-l", str(mount)], check=False)

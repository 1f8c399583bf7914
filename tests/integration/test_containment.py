"""Containment on this machine's real cgroup v2 hierarchy: `stopped` means every process is gone.

The agent runs as a subprocess through the CLI, with a real broker; workloads escape their process group
with `setsid` and double forks. Enforcement of spec.resources runs only where the controllers exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.executors import cgroups
from tests.support.agent import (
    AgentProcess,
    StatusLog,
    desired,
    desired_topic,
    message,
    node_topic,
    pid_alive,
    pid_of,
    status_topic,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until, wait_until_sync

NODE = "node-1"
EID = "contained"


@pytest.fixture
async def agent(broker: Broker, tmp_path: Path, state_dir: Path) -> AsyncIterator[AgentProcess]:
    process = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    process.start()
    try:
        yield process
    finally:
        process.kill()  # its workloads are killed by the state_dir fixture, through their cgroups


@pytest.fixture
async def node(agent: AgentProcess, probe: Probe) -> dict[str, Any]:
    """The agent's node status, once online; tests here need cgroups."""
    await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
    found = await probe.wait_for(
        lambda m: m.topic == node_topic(NODE) and bool(m.payload) and m.json()["state"] == "online", 20
    )
    document: dict[str, Any] = found.json()
    if document["capabilities"]["containment"] != "cgroup":
        pytest.skip("not run: this machine gives the agent no cgroups (it advertises process-group)")
    return document


async def run(probe: Probe, command: list[str], eid: str = EID, **spec: Any) -> dict[str, Any]:
    await probe.publish(desired_topic(NODE, eid), desired(eid, 1, "running", command, **spec), retain=True)
    return await StatusLog(probe, NODE, eid).wait_state("validating")


async def stop(probe: Probe, eid: str = EID, generation: int = 2) -> dict[str, Any]:
    """A short `stopped` document: the spec, fixed since the start, left out."""
    await probe.publish(desired_topic(NODE, eid), desired(eid, generation, "stopped"), retain=True)
    return await StatusLog(probe, NODE, eid).wait_state("stopped", timeout=30)


def escaping(tmp_path: Path) -> tuple[list[str], Path]:
    """A workload that starts a daemon in a session of its own and a double-forked one, writing their pids."""
    pids = tmp_path / "escaped"
    script = f"setsid sleep 601 & echo $! >>{pids}; ( sleep 602 & echo $! >>{pids} ) & exec sleep 603"
    return ["sh", "-c", script], pids


def escaped_pids(pids: Path) -> list[int]:
    wait_until_sync(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=10, what="escapees")
    return [int(p) for p in pids.read_text().split()]


async def run_escaping(probe: Probe, state_dir: Path, tmp_path: Path) -> tuple[list[int], Path]:
    """The escaping workload, running: its pids (main first) and its cgroup, which holds them all."""
    command, pid_file = escaping(tmp_path)
    started = await run(probe, command)
    processes = [pid_of(started), *escaped_pids(pid_file)]
    cgroup = attempt_cgroup(state_dir)
    assert set(processes) <= set(cgroups.procs(cgroup))
    return processes, cgroup


def attempt_cgroup(state_dir: Path, eid: str = EID, attempt: int = 1) -> Path:
    return Path((state_dir / "executions" / eid / f"cgroup-{attempt}").read_text().strip())


async def test_capabilities_say_cgroup_and_what_can_be_limited(node: dict[str, Any]) -> None:
    capabilities = node["capabilities"]
    assert capabilities["containment"] == "cgroup"
    assert set(capabilities["limits"]) <= {"memory_max_bytes", "pids_max", "cpu_max"}
    assert capabilities["engines"] == ["process"]


async def test_stop_kills_daemons_that_left_the_process_group(
    node: dict[str, Any], probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    processes, cgroup = await run_escaping(probe, state_dir, tmp_path)
    assert os.getsid(processes[1]) != os.getsid(processes[0])  # the setsid one left the session

    stopped = await stop(probe)

    # Published only once nothing is left: no wait here.
    assert not any(pid_alive(p) for p in processes)
    assert not cgroup.exists()
    assert stopped["details"]["usage"]["processes"] == 0


async def test_deletion_kills_daemons_that_left_the_process_group(
    node: dict[str, Any], probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    processes, cgroup = await run_escaping(probe, state_dir, tmp_path)
    mark = probe.mark()

    await probe.publish(desired_topic(NODE, EID), b"", retain=True)

    await probe.wait_for(lambda m: m.topic == status_topic(NODE, EID) and not m.payload, 30, after=mark)
    assert not any(pid_alive(p) for p in processes)
    assert not cgroup.exists()


async def test_a_stop_ignored_by_every_process_ends_with_sigkill_after_grace(
    node: dict[str, Any], probe: Probe, tmp_path: Path
) -> None:
    pids = tmp_path / "stubborn"
    script = f"trap '' TERM; setsid sh -c \"trap '' TERM; echo \\$\\$ >{pids}; sleep 600\" & sleep 600"
    command = ["sh", "-c", script]
    started = await run(probe, command, stop={"signal": "SIGTERM", "grace_s": 1.0})
    wait_until_sync(lambda: pids.exists() and pids.read_text().strip() != "", timeout=10, what="escapee")
    escapee = int(pids.read_text())

    stopped = await stop(probe)

    assert "exit code 137" in message(stopped)
    assert not pid_alive(pid_of(started))
    assert not pid_alive(escapee)


async def test_leftovers_of_a_main_process_that_exited_are_killed_and_said_so(
    node: dict[str, Any], probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "left"
    command = ["sh", "-c", f"setsid sleep 600 & echo $! >{pids}; sleep 0.5; exit 3"]
    await probe.publish(
        desired_topic(NODE, EID), desired(EID, 1, "running", command, policy="never"), retain=True
    )
    failed = await StatusLog(probe, NODE, EID).wait_state("failed", timeout=20)

    assert failed["run_output"]["exit_code"] == 3
    assert "1 process left after the main process exited, killed" in message(failed)
    assert not pid_alive(int(pids.read_text()))
    assert not attempt_cgroup(state_dir).exists()


async def test_a_workload_whose_supervisor_was_killed_is_killed_and_reported_lost(
    node: dict[str, Any], probe: Probe, state_dir: Path
) -> None:
    started = await run(probe, ["sleep", "600"], policy="never")
    workload = pid_of(started)
    supervisor = int(Path(f"/proc/{workload}/stat").read_text().rsplit(")", 1)[1].split()[1])

    os.kill(supervisor, signal.SIGKILL)

    lost = await StatusLog(probe, NODE, EID).wait_state("lost", timeout=20)
    assert "its supervisor was gone; 1 process left running, killed" in message(lost)
    assert not pid_alive(workload)
    assert not attempt_cgroup(state_dir).exists()


async def test_after_kill_9_the_agent_readopts_a_workload_and_its_daemon_and_stops_both(
    node: dict[str, Any], agent: AgentProcess, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    command, pid_file = escaping(tmp_path)
    started = await run(probe, command, window_s=0.2)
    await StatusLog(probe, NODE, EID).wait_state("running")
    escaped = escaped_pids(pid_file)

    agent.kill()
    agent.start()
    agent.wait_logged("re-adopting", timeout=20)
    assert all(pid_alive(p) for p in [pid_of(started), *escaped])

    await stop(probe)
    assert not any(pid_alive(p) for p in [pid_of(started), *escaped])
    assert not attempt_cgroup(state_dir).exists()


async def test_kill_9_while_stopping_still_ends_with_every_process_gone(
    node: dict[str, Any], agent: AgentProcess, probe: Probe, tmp_path: Path
) -> None:
    command, pid_file = escaping(tmp_path)
    command = ["sh", "-c", "trap '' TERM; " + command[2]]
    started = await run(probe, command, stop={"signal": "SIGTERM", "grace_s": 3.0})
    escaped = escaped_pids(pid_file)
    await probe.publish(desired_topic(NODE, EID), desired(EID, 2, "stopped"), retain=True)
    await StatusLog(probe, NODE, EID).wait_state("stopping")

    agent.kill()
    agent.start()

    await StatusLog(probe, NODE, EID).wait_state("stopped", timeout=30)
    assert not any(pid_alive(p) for p in [pid_of(started), *escaped])


async def test_a_cgroup_nobody_accounts_for_is_emptied_and_removed_at_start(
    broker: Broker, tmp_path: Path, state_dir: Path
) -> None:
    """As after a kill -9 between a cgroup's creation and the spawn's record: its processes are killed."""
    workloads = cgroups.workloads_dir(state_dir)
    if workloads is None:
        pytest.skip("not run: no cgroup v2 hierarchy here")
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    agent.start()
    agent.wait_logged("agent started", timeout=20)
    agent.kill()
    orphan = workloads / "never-recorded-1"
    orphan.mkdir()
    planted = await asyncio.create_subprocess_exec(
        "sh", "-c", f'echo 0 >"{orphan}/cgroup.procs" && exec setsid sleep 600'
    )
    try:
        await wait_until(lambda: cgroups.populated(orphan), timeout=10, what="planted process in the cgroup")
        agent.start()
        await wait_until(lambda: not orphan.exists(), timeout=20, what="orphan cgroup removed")
        assert await asyncio.wait_for(planted.wait(), 10) == -signal.SIGKILL
    finally:
        agent.kill()
        with contextlib.suppress(ProcessLookupError):
            planted.kill()
        await planted.wait()


async def test_usage_grows_with_a_busy_workload(node: dict[str, Any], probe: Probe, tmp_path: Path) -> None:
    busy = tmp_path / "busy-done"
    script = f"sleep 600 & i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; touch {busy}; wait"
    command = ["sh", "-c", script]
    await run(probe, command)
    running = await StatusLog(probe, NODE, EID).wait_state("running")  # a state change: a fresh sample
    await wait_until(busy.exists, timeout=60, what="busy loop done")

    stopped = await stop(probe)

    first, last = running["details"]["usage"], stopped["details"]["usage"]
    assert first["processes"] >= 1
    assert last["processes"] == 0
    assert last["cpu_seconds"] > first["cpu_seconds"]
    assert last["memory_bytes"] is None or last["memory_bytes"] >= 0
    assert last["at"] > first["at"]


@pytest.mark.parametrize(
    ("limit", "value", "controller"),
    [("memory_max_bytes", 64 << 20, "memory"), ("pids_max", 10, "pids"), ("cpu_max", 0.5, "cpu")],
)
async def test_a_limit_this_node_cannot_enforce_is_rejected_with_the_reason(
    node: dict[str, Any], probe: Probe, limit: str, value: float, controller: str
) -> None:
    if limit in node["capabilities"]["limits"]:
        pytest.skip(f"not run: this node enforces {limit} (see the enforcement tests)")
    document = desired(EID, 1, "running", ["sleep", "600"], resources={limit: value})

    await probe.publish(desired_topic(NODE, EID), document, retain=True)

    failed = await StatusLog(probe, NODE, EID).wait_state("failed")
    reason = failed["details"]["rejected"]["reason"]
    assert (
        reason
        == f"spec.resources: {controller} limit requested, but this node's cgroup has no {controller} controller"
    )


# --- Enforcement: only where the controllers are enabled for the agent's subtree -------------------------


def needs(node: dict[str, Any], limit: str) -> None:
    if limit not in node["capabilities"]["limits"]:
        pytest.skip(f"not run: this node's cgroup cannot enforce {limit} (no controller for it)")


@pytest.mark.cgroup_limits
async def test_over_its_memory_limit_a_workload_fails_killed_by_the_oom_killer(
    node: dict[str, Any], probe: Probe
) -> None:
    needs(node, "memory_max_bytes")
    command = ["python3", "-c", "b = bytearray(512 << 20); import time; time.sleep(600)"]
    document = desired(EID, 1, "running", command, policy="never", resources={"memory_max_bytes": 32 << 20})
    await probe.publish(desired_topic(NODE, EID), document, retain=True)

    failed = await StatusLog(probe, NODE, EID).wait_state("failed", timeout=30)
    assert "killed by the OOM killer" in message(failed)


@pytest.mark.cgroup_limits
@pytest.mark.parametrize(
    "case", [("pids_max", 7, "pids.max", "7"), ("cpu_max", 0.25, "cpu.max", "25000 100000")]
)
async def test_pids_and_cpu_limits_are_set_on_the_attempts_cgroup(
    node: dict[str, Any], probe: Probe, state_dir: Path, case: tuple[str, float, str, str]
) -> None:
    limit, value, file, text = case
    needs(node, limit)
    await run(probe, ["sleep", "600"], resources={limit: value})
    assert (attempt_cgroup(state_dir) / file).read_text().strip() == text
    await stop(probe)


async def test_in_a_cgroup_of_its_own_the_agent_moves_into_a_leaf_and_puts_workloads_beside_it(
    broker: Broker, probe: Probe, tmp_path: Path, state_dir: Path
) -> None:
    """The layout under systemd's Delegate=yes, with a cgroup made here standing in for the service's."""
    mount = cgroups.unified_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None:
        pytest.skip("not run: no cgroup v2 hierarchy here")
    service = mount[1] / f"test-service-{os.getpid()}-{tmp_path.name[-12:]}"
    try:
        service.mkdir()
    except OSError as exc:
        pytest.skip(f"not run: cannot create a cgroup here ({exc})")
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    command = [sys.executable, "-m", "agent", "run", "--config", str(agent.config_path)]
    with agent.log_path.open("ab") as log:
        agent.proc = subprocess.Popen(
            ["sh", "-c", 'echo 0 >"$0/cgroup.procs" && exec "$@"', str(service), *command],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    workloads = service / cgroups.workloads_dir(state_dir).name  # type: ignore[union-attr]
    try:
        await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
        started = await run(probe, ["sleep", "600"])
        assert agent.proc.pid in cgroups.procs(service / "agent")  # with the supervisors, its children
        assert cgroups.procs(service) == []
        # It joins its cgroup a moment after the spawn reported its pid (supervisor.c, supervisor.sh).
        wait_until_sync(
            lambda: cgroups.procs(workloads / f"{EID}-1") == [pid_of(started)],
            timeout=10,
            what="workload joined",
        )
        await stop(probe)
        assert not (workloads / f"{EID}-1").exists()
    finally:
        agent.kill()
        cgroups.kill(service)  # all of it was made by this test: supervisors in agent/ included
        await wait_until(lambda: not cgroups.populated(service), timeout=10, what="test cgroup emptied")
        for leftover in [*workloads.glob("*/"), workloads, service / "agent", service]:
            with contextlib.suppress(FileNotFoundError):
                leftover.rmdir()

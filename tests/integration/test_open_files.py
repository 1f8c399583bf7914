"""The open-files limit: the agent raises its own soft limit to the hard one, workloads get the soft limit
it was started with, and a limit that is really reached is said (failure reason and node status).

The agent runs as its own process, started under the limit a systemd service gets by default (soft
1024) with the hard limit this machine allows (524288 under systemd; whatever the test process has here).
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    AgentProcess,
    desired,
    desired_topic,
    node_topic,
    pid_of,
    run_sleepers,
    sleeper,
    status_in,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
SERVICE_SOFT = 1024
COUNT = 2000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The usual broker, but saving once a second rather than after every change: 2000 executions make
    some 20,000 changes (their desired documents, 18,770 statuses and events), and a save of the whole
    database after each let through about 25 messages a second (the 2000 ran within 2 min; 9 min on, a
    third of what they published still waited in the agent's outbox, and the wait ran out). Nothing here
    kills the broker, so nothing needs a save after every change."""
    instance = Broker(tmp_path / "broker", save_each_change=False)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def open_files_of(pid: int) -> tuple[int, int]:
    """(soft, hard) ``Max open files`` of a process, as /proc shows it."""
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.MULTILINE)
    assert found is not None, text
    return int(found[1]), int(found[2])


def node_status(probe: Probe) -> dict[str, Any]:
    for message in reversed(probe.messages):
        if message.topic == node_topic(NODE) and message.payload:
            document: dict[str, Any] = message.json()
            return document
    return {}


@pytest.mark.scale  # 2000 spawns: 45 s with teardown at load 3, 64 s at load 25-110 (pyproject.toml, markers)
@pytest.mark.timeout(1500)  # 2000 spawns, and their teardown, on a loaded machine
async def test_2000_workloads_run_under_a_service_soft_limit_and_each_gets_that_soft_limit(
    broker: Broker, probe: Probe, tmp_path: Path, state_dir: Path
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 2 * COUNT:
        pytest.skip(f"the hard open-files limit here ({hard}) is below what {COUNT} watches could use")
    await probe.subscribe(node_topic(NODE))
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir, log={"level": "info"})
    agent.start(open_files=(SERVICE_SOFT, hard))
    assert agent.proc is not None
    try:
        await wait_until(lambda: node_status(probe).get("state") == "online", timeout=30, what="online")
        assert open_files_of(agent.proc.pid) == (hard, hard)

        await run_sleepers(probe, NODE, [f"w{number}" for number in range(COUNT)], timeout=600)
        # More descriptors than the soft limit it was started with: a pidfd per watched workload.
        assert len(os.listdir(f"/proc/{agent.proc.pid}/fd")) > SERVICE_SOFT
        for execution_id in ("w0", f"w{COUNT // 2}", f"w{COUNT - 1}"):
            workload = pid_of(await status_in(probe, NODE, execution_id, "running"))
            assert open_files_of(workload) == (SERVICE_SOFT, hard)
        assert node_status(probe)["limit_reached"] is None
        assert "Traceback" not in agent.log_path.read_text()
    finally:
        agent.kill()


async def test_a_reached_open_files_limit_is_the_failure_reason_and_in_the_node_status(
    broker: Broker, probe: Probe, tmp_path: Path, state_dir: Path
) -> None:
    await probe.subscribe(node_topic(NODE))
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    agent.start()
    assert agent.proc is not None
    pid = agent.proc.pid
    try:
        await wait_until(lambda: node_status(probe).get("state") == "online", timeout=30, what="online")
        assert node_status(probe)["limit_reached"] is None
        # The soft limit, from outside (raising a hard limit needs privileges the test may not have): a few
        # descriptors above those the agent holds, fewer than a spawn needs (its pipes and log).
        _, hard = open_files_of(pid)
        held = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 3, hard))
        await probe.publish(
            desired_topic(NODE, "starved"), desired("starved", command=sleeper()), retain=True
        )
        failed = await status_in(probe, NODE, "starved", "failed")
        reason = failed["observed_state"]["message"]
        assert "open-files limit" in reason, reason
        assert "LimitNOFILE=" in reason, reason
        await wait_until(
            lambda: (node_status(probe).get("limit_reached") or {}).get("limit") == "open_files",
            timeout=30,
            what="the node status saying the open-files limit is reached",
        )
        assert "open-files limit" in node_status(probe)["limit_reached"]["message"]

        # Room again: the next spawn succeeds, and the node status no longer says it.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
        await probe.publish(desired_topic(NODE, "fed"), desired("fed", command=sleeper()), retain=True)
        await status_in(probe, NODE, "fed", "running")
        await wait_until(
            lambda: node_status(probe).get("limit_reached", "missing") is None,
            timeout=30,
            what="limit_reached cleared",
        )
        assert "Traceback" not in agent.log_path.read_text()
    finally:
        agent.kill()

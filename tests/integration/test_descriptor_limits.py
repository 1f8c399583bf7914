"""More workloads than file descriptors: every one runs, is watched and stops; the agent keeps answering.

The agent runs as its own process under a hard open-files limit of 256 (so it cannot raise it), with 300
workloads: one pidfd each would need more descriptors than it may open. Past its pidfd budget it watches
by polling (agent/executors/process.py), keeping the descriptors its socket, store and spawns need.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest

from tests.support.agent import (
    AgentProcess,
    desired,
    desired_topic,
    node_counts,
    node_topic,
    pid_alive,
    pid_of,
    run_sleepers,
    sleeper,
    status_in,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
LIMIT = 256
COUNT = 300


def workload_pids(state_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in (state_dir / "executions").glob("*/pid-*")]


@pytest.mark.slow
async def test_more_workloads_than_descriptors_all_run_are_watched_and_stop(
    broker: Broker, probe: Probe, tmp_path: Path, state_dir: Path
) -> None:
    await probe.subscribe(node_topic(NODE))
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    agent.start()
    assert agent.proc is not None
    # Soft and hard: the agent cannot raise it. Set from outside (prlimit(2)) before any workload exists.
    resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    try:
        ids = [f"w{i}" for i in range(COUNT)]
        await run_sleepers(probe, NODE, ids, timeout=120)
        limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
        assert f"Max open files            {LIMIT}                  {LIMIT}" in limits, limits
        assert len(os.listdir(f"/proc/{agent.proc.pid}/fd")) < LIMIT

        # Still answering: a new execution runs.
        await probe.publish(desired_topic(NODE, "after"), desired("after", command=sleeper()), retain=True)
        await status_in(probe, NODE, "after", "running")

        # A workload watched by polling (the last ones are past the pidfd budget) is seen to end.
        victim = await status_in(probe, NODE, ids[-1], "running")
        os.killpg(pid_of(victim), signal.SIGKILL)
        ended = await status_in(probe, NODE, ids[-1], "failed")
        assert ended["run_output"]["exit_code"] == 128 + signal.SIGKILL

        pids = workload_pids(state_dir)
        assert len(pids) == COUNT + 1
        for execution_id in [*ids[:-1], "after"]:
            await probe.publish(
                desired_topic(NODE, execution_id), desired(execution_id, 2, "stopped"), retain=True
            )
        await wait_until(
            lambda: node_counts(probe, NODE) == {"stopped": COUNT, "failed": 1},
            timeout=120,
            what="all stopped",
        )
        assert not [p for p in pids if pid_alive(p)]
        assert "Traceback" not in agent.log_path.read_text()
    finally:
        agent.kill()

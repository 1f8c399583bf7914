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
from typing import Any

import pytest

from tests.support.agent import AgentProcess, desired, desired_topic, pid_alive, pid_of, sleeper
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
LIMIT = 256
COUNT = 300


class Newest:
    """The newest status of every execution, read incrementally: a probe whose loop is busy re-reading
    thousands of messages falls behind, and the broker drops what queues past its limit for it."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe
        self._read = 0
        self._newest: dict[str, dict[str, Any]] = {}

    def __call__(self) -> dict[str, dict[str, Any]]:
        messages = self._probe.messages
        for message in messages[self._read :]:
            if message.topic.endswith("/status") and "/executions/" in message.topic and message.payload:
                document = message.json()
                known = self._newest.get(document["execution_id"])
                if known is None or document["revision"] > known["revision"]:
                    self._newest[document["execution_id"]] = document
        self._read = len(messages)
        return self._newest

    def all_in(self, ids: list[str], state: str) -> bool:
        newest = self()
        return all(i in newest and newest[i]["observed_state"]["state_type"] == state for i in ids)


@pytest.mark.slow
async def test_more_workloads_than_descriptors_all_run_are_watched_and_stop(
    broker: Broker, watching: Probe, tmp_path: Path, state_dir: Path
) -> None:
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)
    agent.start()
    assert agent.proc is not None
    # Soft and hard: the agent cannot raise it. Set from outside (prlimit(2)) before any workload exists.
    resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    latest = Newest(watching)
    try:
        ids = [f"w{i}" for i in range(COUNT)]
        for execution_id in ids:
            await watching.publish(
                desired_topic(NODE, execution_id), desired(execution_id, command=sleeper()), retain=True
            )
        await wait_until(
            lambda: latest.all_in(ids, "running"), timeout=120, interval=0.2, what=f"{COUNT} running"
        )
        limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
        assert f"Max open files            {LIMIT}                  {LIMIT}" in limits, limits
        assert len(os.listdir(f"/proc/{agent.proc.pid}/fd")) < LIMIT

        # Still answering: a new execution runs.
        await watching.publish(desired_topic(NODE, "after"), desired("after", command=sleeper()), retain=True)
        await wait_until(lambda: latest.all_in(["after"], "running"), timeout=30, what="a new one runs")

        # A workload watched by polling (the last ones are past the pidfd budget) is seen to end.
        victim = latest()[ids[-1]]
        os.killpg(pid_of(victim), signal.SIGKILL)
        ended = await wait_until(
            lambda: (d := latest()[ids[-1]])["observed_state"]["state_type"] == "failed" and d,
            timeout=15,
            what="the killed workload reported",
        )
        assert ended["run_output"]["exit_code"] == 128 + signal.SIGKILL

        pids = [pid_of(d) for i, d in latest().items() if i != ids[-1]]
        for execution_id in [*ids[:-1], "after"]:
            await watching.publish(
                desired_topic(NODE, execution_id), desired(execution_id, 2, "stopped"), retain=True
            )
        await wait_until(
            lambda: latest.all_in([*ids[:-1], "after"], "stopped"), timeout=120, what="all stopped"
        )
        assert not [p for p in pids if pid_alive(p)]
        assert "Traceback" not in agent.log_path.read_text()
    finally:
        agent.kill()

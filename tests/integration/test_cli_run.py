"""`reconcile-agent run` as an operator runs it: a real process, real signals, a real broker and workloads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    AgentProcess,
    StatusLog,
    config_for,
    desired,
    desired_topic,
    node_topic,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
)
from tests.support.broker import Broker
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until

NODE = "node-1"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agents(broker: Broker, tmp_path: Path, state_dir: Path) -> Iterator[list[AgentProcess]]:
    """Agent processes of the test, all on one workdir (``tmp_path/agent``); killed at teardown.

    ``state_dir`` is requested so that the workloads they leave behind are killed too.
    """
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def new_agent(broker: Broker, tmp_path: Path, agents: list[AgentProcess]) -> AgentProcess:
    agent = AgentProcess(broker, tmp_path / "agent", NODE)
    agents.append(agent)
    return agent


def is_node_state(state: str) -> Any:
    def check(m: Message) -> bool:
        return m.topic == node_topic(NODE) and bool(m.payload) and m.json()["state"] == state

    return check


async def wait_node(probe: Probe, state: str, after: int = 0, timeout: float = 10) -> dict[str, Any]:
    message = await probe.wait_for(is_node_state(state), timeout, after=after, what=f"node {state}")
    document: dict[str, Any] = message.json()
    return document


async def retained_node_status(broker: Broker) -> dict[str, Any]:
    """What a client that connects now is told about the node: the retained node status."""
    async with Probe(broker.host, broker.port) as fresh:
        await fresh.subscribe(node_topic(NODE))
        message = await fresh.wait_for_topic(node_topic(NODE))
    assert message.retain
    document: dict[str, Any] = message.json()
    return document


async def exit_code(agent: AgentProcess, timeout: float) -> int:
    return await asyncio.to_thread(agent.wait, timeout)


def assert_no_traceback(agent: AgentProcess) -> None:
    text = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


def distinct(log: StatusLog) -> tuple[list[int], list[str]]:
    """Revisions and states with exact re-publications folded (at-least-once delivery across a crash).

    An outbox row the broker acknowledged just before a SIGKILL is published again by the next agent: the
    very same document, same revision. Anything else under a repeated revision is a bug.
    """
    by_revision: dict[int, dict[str, Any]] = {}
    for document in log.documents():
        first = by_revision.setdefault(document["revision"], document)
        assert first == document, f"revision {document['revision']} published with two contents"
    revisions = [d["revision"] for d in log.documents()]
    assert revisions == sorted(revisions), f"revisions out of order: {revisions}"
    return list(by_revision), [d["observed_state"]["state_type"] for d in by_revision.values()]


async def start_online(agent: AgentProcess, probe: Probe) -> dict[str, Any]:
    mark = probe.mark()
    agent.start()
    return await wait_node(probe, "online", after=mark)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_agent_cleanly_and_leaves_the_workload_running(
    broker: Broker, watching: Probe, tmp_path: Path, agents: list[AgentProcess], signum: signal.Signals
) -> None:
    agent = new_agent(broker, tmp_path, agents)
    online = await start_online(agent, watching)
    assert online["node_id"] == NODE
    assert (await retained_node_status(broker))["state"] == "online"
    await watching.publish(desired_topic(NODE, "w"), desired("w", command=sleeper()), retain=True)
    pid = pid_of(await StatusLog(watching, NODE, "w").wait_state("running"))
    # The node status has caught up (see test_offline_is_the_last_word_even_with_a_node_status_change_pending).
    await watching.wait_for(
        lambda m: m.topic == node_topic(NODE) and m.json()["executions"] == {"running": 1}, what="counts"
    )

    mark = watching.mark()
    agent.signal(signum)
    assert await exit_code(agent, timeout=5) == 0

    offline = await wait_node(watching, "offline", after=mark)
    assert offline["node_id"] == NODE
    assert offline["started_at"] == online["started_at"]
    assert (await retained_node_status(broker))["state"] == "offline"
    assert pid_alive(pid)  # stopping the agent never stops workloads
    assert_no_traceback(agent)


async def test_after_kill_9_the_will_says_offline_and_a_restarted_agent_re_adopts_the_workload(
    broker: Broker, watching: Probe, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    agent = new_agent(broker, tmp_path, agents)
    await start_online(agent, watching)
    topic = desired_topic(NODE, "w")
    await watching.publish(topic, desired("w", command=sleeper()), retain=True)
    log = StatusLog(watching, NODE, "w")
    running = await log.wait_state("running")
    pid = pid_of(running)

    mark = watching.mark()
    agent.kill()  # SIGKILL: the socket closes, the broker publishes the will at once
    will = await wait_node(watching, "offline", after=mark, timeout=5)
    assert will["node_id"] == NODE
    assert (await retained_node_status(broker))["state"] == "offline"
    assert pid_alive(pid)

    seen = len(log.documents())
    await start_online(agent, watching)
    await asyncio.to_thread(agent.wait_logged, "re-adopting", 10)
    # Re-adopted, not restarted: any status published since names the same process.
    assert all(pid_of(document) == pid for document in log.documents()[seen:])
    assert pid_alive(pid)

    await watching.publish(topic, desired("w", 2, "stopped", sleeper()), retain=True)
    stopped = await log.wait_state("stopped")
    assert pid_of(stopped) == pid
    assert stopped["run_output"]["exit_code"] == 128 + 15
    assert not pid_alive(pid)
    revisions, states = distinct(log)
    assert states == ["pending", "starting", "validating", "running", "stopping", "stopped"]
    assert revisions == list(range(1, len(revisions) + 1))
    assert_no_traceback(agent)


async def test_a_workload_that_exits_while_the_agent_is_down_is_reported_with_its_exit_code(
    broker: Broker, watching: Probe, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    go = tmp_path / "go"
    command = ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit 5"]
    agent = new_agent(broker, tmp_path, agents)
    await start_online(agent, watching)
    await watching.publish(desired_topic(NODE, "j"), desired("j", command=command), retain=True)
    log = StatusLog(watching, NODE, "j")
    pid = pid_of(await log.wait_state("running"))

    agent.kill()
    go.touch()  # the workload ends while nobody watches it
    await wait_until(lambda: not pid_alive(pid), timeout=10, what="workload gone")

    await start_online(agent, watching)
    failed = await log.wait_state("failed")
    assert failed["run_output"]["exit_code"] == 5
    assert pid_of(failed) == pid
    revisions, states = distinct(log)
    assert states == ["pending", "starting", "validating", "running", "failed"]  # not lost
    assert revisions == [1, 2, 3, 4, 5]
    assert_no_traceback(agent)


BAD_CONFIGS = {
    "unknown-key": ("node_id: n1\nstate_dir: {state}\nmqtt:\n  prot: 1883\n", "mqtt.prot"),
    "wrong-type": ("node_id: n1\nstate_dir: {state}\nmqtt:\n  port: '1883'\n", "mqtt.port"),
    "bad-node-id": ("node_id: a/b\nstate_dir: {state}\n", "node_id"),
    "not-yaml": ("node_id: [unclosed\n", "malformed YAML"),
    "missing-file": (None, "cannot read"),
}


@pytest.mark.parametrize(("text", "words"), list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_run_with_a_bad_config_exits_2_with_a_short_message(
    tmp_path: Path, text: str | None, words: str
) -> None:
    path = tmp_path / "agent.yaml"
    if text is not None:
        path.write_text(text.format(state=tmp_path / "state"))
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECONCILE_")}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean,
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    assert words in result.stderr
    assert len(result.stderr.splitlines()) <= 5, result.stderr
    assert not (tmp_path / "state").exists()  # nothing was started


async def test_a_second_agent_on_the_same_state_dir_exits_2_and_the_first_carries_on(
    broker: Broker, watching: Probe, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    first = new_agent(broker, tmp_path, agents)
    await start_online(first, watching)
    second = new_agent(broker, tmp_path, agents)
    second.log_path = tmp_path / "agent" / "second.log"  # its own log, to read its message alone
    second.start()

    assert await exit_code(second, timeout=10) == 2
    text = second.log_path.read_text(errors="replace")
    assert "another agent is already running" in text, text
    assert str(first.state_dir) in text
    assert "Traceback" not in text
    assert len(text.splitlines()) <= 5, text

    # The first agent is still up and still the one the broker talks to.
    assert first.proc is not None
    assert first.proc.poll() is None
    await watching.publish(desired_topic(NODE, "p"), desired("p", 1, "pending", sleeper()), retain=True)
    await StatusLog(watching, NODE, "p").wait_state("pending")
    assert (await retained_node_status(broker))["state"] == "online"


async def test_offline_is_the_last_word_even_with_a_node_status_change_pending(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    """In-process, to hold the moment still: a state change has just happened when shutdown begins.

    With a subprocess the same happens when SIGTERM arrives right after a workload changed state.
    """
    async with running_agent(config_for(broker, state_dir)) as agent:
        await wait_node(watching, "online")
        await wait_until(
            lambda: agent.store.depth() == 0 and not agent.outbox.node_status_dirty, timeout=10, what="idle"
        )
        agent.outbox.changed(node_status=True)  # what every transition of an execution does
    await wait_node(watching, "offline")
    assert (await retained_node_status(broker))["state"] == "offline"

"""One node id, one agent, against a real broker: a live twin is refused, a restart of the same agent is
not a conflict, a stale ``online`` left by a dead agent is told apart, and a session taken over again and
again makes the agent stop instead of fighting (docs/protocol.md, "One agent per node id").
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.identity import TAKEOVER_LIMIT
from tests.support.agent import AgentProcess, StatusLog, desired, desired_topic, node_topic, pid_of, sleeper
from tests.support.broker import Broker
from tests.support.mqtt import Probe

KEEPALIVE_S = 5  # the smallest allowed: the refresh is every 2.5 s, the wait for a stale one 5 s
MQTT = {"keepalive_s": KEEPALIVE_S}


def agent_in(broker: Broker, workdir: Path) -> AgentProcess:
    return AgentProcess(broker, workdir, node_id="node-1", mqtt=MQTT)


async def online(probe: Probe, after: int = 0, instance_id: str | None = None) -> dict[str, Any]:
    message = await probe.wait_for(
        lambda m: (
            m.topic == node_topic("node-1")
            and not m.retain  # published just now, not left behind
            and m.json()["state"] == "online"
            and instance_id in (None, m.json()["instance_id"])
        ),
        20.0,
        after=after,
        what="node-1 online",
    )
    document: dict[str, Any] = message.json()
    return document


def logged(agent: AgentProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in agent.log_lines() if line.get("event") == event]


async def test_a_second_agent_with_the_node_id_of_a_live_one_refuses_to_start(
    tmp_path: Path, broker: Broker, watching: Probe, state_dir: Path
) -> None:
    first = agent_in(broker, tmp_path / "a")
    second = agent_in(broker, tmp_path / "b")
    first.start()
    try:
        status = await online(watching)
        assert status["hostname"] == socket.gethostname()
        await watching.publish(desired_topic("node-1", "web"), desired("web", command=sleeper()), retain=True)
        await StatusLog(watching, "node-1", "web").wait_state("running")
        began = time.monotonic()
        second.start()
        assert second.wait(timeout=KEEPALIVE_S + 15) == 2
        took = time.monotonic() - began
        (error,) = logged(second, "stopped: another agent acts for this node id")
        print(f"\nrefused after {took:.1f} s: {error['error']}")
        assert (
            f"node id 'node-1' is in use by another agent: instance {status['instance_id']} on host"
            in error["error"]
        )
        assert not (second.state_dir / "executions").exists(), "it acted on nothing"
        assert first.proc is not None
        assert first.proc.poll() is None
        assert not logged(first, "connection lost"), "the first agent's session was left alone"
    finally:
        first.kill()
        second.kill()


async def _leave_a_stale_online(broker: Broker, tmp_path: Path) -> tuple[AgentProcess, dict[str, Any], int]:
    """An agent that dies while the broker is down (a crash: a clean stop would send the wills): its will
    never reaches the broker, and its retained `online` stays."""
    agent = agent_in(broker, tmp_path / "a")
    agent.start()
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe("reconcile/v1/nodes/#")
        status = await online(probe)
        await probe.publish(desired_topic("node-1", "web"), desired("web", command=sleeper()), retain=True)
        pid = pid_of(await StatusLog(probe, "node-1", "web").wait_state("running"))
    await asyncio.to_thread(broker.wait_persisted, status["instance_id"].encode())
    await broker.akill()
    agent.kill()
    await broker.astart()
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(node_topic("node-1"))
        left = await probe.wait_for_topic(node_topic("node-1"))
        assert left.retain
        assert left.json()["state"] == "online", "the broker kept the dead agent's online status"
        assert left.json()["instance_id"] == status["instance_id"]
    return agent, status, pid


async def start_until_online(broker: Broker, agent: AgentProcess) -> tuple[dict[str, Any], float]:
    """Start the agent; its first fresh `online` and how long it took to come."""
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe("reconcile/v1/nodes/#")
        mark = probe.mark()
        began = time.monotonic()
        agent.start()
        status = await online(probe, after=mark)
        return status, time.monotonic() - began


async def test_a_restart_of_the_same_agent_is_not_a_conflict(
    tmp_path: Path, broker: Broker, state_dir: Path
) -> None:
    agent, status, pid = await _leave_a_stale_online(broker, tmp_path)
    try:
        again, took = await start_until_online(broker, agent)
        print(f"\nthe same instance was online again after {took:.1f} s")
        assert again["instance_id"] == status["instance_id"]
        assert not logged(
            agent, "the retained node status says another agent is online: waiting for news of it"
        )
        assert any(line.get("pid") == pid for line in logged(agent, "re-adopting"))
    finally:
        agent.kill()


async def test_a_stale_online_of_a_dead_agent_is_told_apart_within_the_bounded_wait(
    tmp_path: Path, broker: Broker, state_dir: Path
) -> None:
    dead, status, _ = await _leave_a_stale_online(broker, tmp_path)
    other = agent_in(broker, tmp_path / "b")
    try:
        mine, took = await start_until_online(broker, other)
        print(f"\na stale online of {status['instance_id']} was taken over after {took:.1f} s")
        assert mine["instance_id"] != status["instance_id"]
        stale = "the other agent's online status is stale: no update in the wait, taking over this node id"
        (waited,) = logged(other, stale)
        assert waited["waited_s"] == KEEPALIVE_S
    finally:
        dead.kill()
        other.kill()


async def test_an_agent_whose_session_is_taken_over_again_and_again_stops_instead_of_fighting(
    tmp_path: Path, broker: Broker, watching: Probe, state_dir: Path
) -> None:
    if broker.kind == "amqtt":
        # Tried: on the embedded fallback the agent's session was never seen taken over by the second client.
        pytest.skip("needs mosquitto: the MQTT session takeover by client id is mosquitto's behaviour here")
    agent = agent_in(broker, tmp_path / "a")
    agent.start()
    try:
        mark = 0
        for _ in range(TAKEOVER_LIMIT):
            await online(watching, after=mark)  # (re)connected
            mark = watching.mark()
            # Another client with the agent's client id, as a copied configuration would make one.
            async with aiomqtt.Client(broker.host, broker.port, identifier="reconcile-agent-node-1"):
                pass
        assert agent.wait(timeout=20) == 2
        (error,) = logged(agent, "stopped: another agent acts for this node id")
        print(f"\n{error['error']}")
        assert f"{TAKEOVER_LIMIT} sessions in a row were lost soon after they were made" in error["error"]
        assert "reconcile-agent-node-1" in error["error"]
    finally:
        agent.kill()

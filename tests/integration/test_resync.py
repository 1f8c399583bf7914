"""The agent against a stock mosquitto's queues: nothing published while it was away is lost, nothing
the broker lost makes it stop a workload, and a broker that lost the agent's session gets every status
back exactly (agent/resync.py, docs/protocol.md "Past the broker's queues").

A stock mosquitto queues at most 1000 QoS 1 messages for an offline persistent client and serves a QoS 1
subscription at most 1000 + 20 retained messages; it keeps nothing across a restart (no persistence).
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from agent.core.lifecycle import MISSING
from tests.integration.test_fleet_view import publish_all
from tests.support.agent import (
    config_for,
    desired,
    desired_topic,
    events_topic,
    node_counts,
    node_topic,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
    status_topic,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
MANY = 2000  # twice what the broker queues for the agent while it is away


@pytest.mark.scale  # 2000 spawns: 10 min and more on 2 cores (pyproject.toml, markers)
@pytest.mark.timeout(1500)  # 2000 spawns, and their teardown, on a loaded machine
async def test_two_thousand_documents_published_while_the_agent_was_stopped_are_all_acted_on(
    stock: Broker, state_dir: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3 * MANY:
        pytest.skip(f"needs an open-files hard limit of {3 * MANY}, have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the agent runs in this process
    config = config_for(stock, state_dir, NODE)
    try:
        async with running_agent(config):
            pass  # its persistent session now exists on the broker, with its subscription
        documents = {
            desired_topic(NODE, f"s-{i:04d}"): json.dumps(
                desired(f"s-{i:04d}", command=sleeper(600))
            ).encode()
            for i in range(MANY)
        }
        await publish_all(stock, list(documents.items()))
        async with Probe(stock.host, stock.port) as probe, running_agent(config) as agent:
            await probe.subscribe(node_topic(NODE), qos=0)

            def up() -> bool:
                counts = node_counts(probe, NODE)
                return counts.get("validating", 0) + counts.get("running", 0) == MANY

            try:
                await wait_until(up, timeout=300, what=f"all {MANY} validating or running")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; node counts {node_counts(probe, NODE)}") from exc
            assert agent.resync.passes >= 1
            assert len(agent.runtime.executions) == MANY
            assert all(e.generation == 1 for e in agent.runtime.executions.values())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def without_times(document: dict[str, object]) -> dict[str, object]:
    details = document["details"]
    assert isinstance(details, dict)
    kept = {k: v for k, v in details.items() if k not in (MISSING, "usage")}
    return {**document, "revision": None, "updated_at": None, "details": kept}


async def test_a_broker_that_lost_everything_gets_exact_copies_and_nothing_is_stopped(
    stock: Broker, state_dir: Path
) -> None:
    names = ["a", "b", "c"]
    async with running_agent(config_for(stock, state_dir, NODE)) as agent:
        async with Probe(stock.host, stock.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#", qos=1)
            for name in names:
                await probe.publish(
                    desired_topic(NODE, name), desired(name, command=sleeper(600)), retain=True
                )
            for name in names:
                await probe.wait_for(
                    lambda m, n=name: (
                        m.topic == status_topic(NODE, n)
                        and m.json()["observed_state"]["state_type"] == "running"
                    ),
                    timeout=30,
                    what=f"{name} running",
                )
            before = {
                name: [m for m in probe.messages if m.topic == status_topic(NODE, name)][-1] for name in names
            }
            pids = {name: pid_of(before[name].json()) for name in names}
        await stock.arestart()  # a stock mosquitto keeps nothing: no retained message, no session
        async with Probe(stock.host, stock.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#", qos=1)
            for name in names:
                copy = await probe.wait_for_topic(status_topic(NODE, name), timeout=30)
                if MISSING not in copy.json()["details"]:
                    assert copy.payload == before[name].payload, "an exact copy, same revision"
                else:
                    # The agent reconnected, republished and resynced before this probe subscribed: the
                    # retained status is already the mark, one revision above the copy, and the same
                    # document but for the mark and the times.
                    assert copy.json()["revision"] == before[name].json()["revision"] + 1
                    assert without_times(copy.json()) == without_times(before[name].json())
                marked = await probe.wait_for(
                    lambda m, n=name: m.topic == status_topic(NODE, n) and MISSING in m.json()["details"],
                    timeout=30,
                    what=f"{name} marked",
                )
                assert marked.json()["revision"] == before[name].json()["revision"] + 1
                assert marked.json()["observed_state"]["state_type"] == "running"
            missing = [
                m.json()["execution_id"]
                for m in probe.messages
                if m.topic == events_topic(NODE) and m.json()["type"] == "desired_missing"
            ]
            assert sorted(missing) == names
            assert all(pid_alive(pid) for pid in pids.values()), "nothing stopped for a broker's loss"

            # The orchestrator restores one document: the mark goes, the workload is the same.
            index = len(probe.messages)
            await probe.publish(desired_topic(NODE, "a"), desired("a", command=sleeper(600)), retain=True)
            restored = await probe.wait_for(
                lambda m: m.topic == status_topic(NODE, "a") and MISSING not in m.json()["details"],
                timeout=30,
                after=index,
                what="a restored",
            )
            assert pid_of(restored.json()) == pids["a"]
            await probe.wait_for(
                lambda m: m.topic == events_topic(NODE) and m.json()["type"] == "desired_restored",
                timeout=30,
                after=index,
                what="desired_restored event",
            )
        assert agent.runtime.executions["b"].details.get(MISSING) is not None

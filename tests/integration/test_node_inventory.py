"""Node inventory (issue 14 item 4): the node status carries labels, capacity, max_executions, cordoned
and capabilities, and ``reconcile-agent nodes`` shows them, as a table and as JSON.

A real agent on a real broker; the CLI is a real subprocess.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from agent.capacity import measure
from agent.config import LimitsConfig
from tests.integration.test_operator_cli import broker_args, cli
from tests.support.agent import config_for, desired, desired_topic, node_topic, running_agent, sleeper
from tests.support.broker import Broker
from tests.support.mqtt import Probe

NODE = "node-1"


async def test_node_status_carries_the_inventory_and_nodes_shows_it(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir).model_copy(
        update={
            "labels": {"zone": "eu-1a", "example.com/gpu": "", "tier": "edge"},
            "limits": LimitsConfig(max_executions=5),
        }
    )
    async with running_agent(config):
        await watching.publish(desired_topic(NODE, "a"), desired("a", command=sleeper()), retain=True)
        status = (
            await watching.wait_for(
                lambda m: m.topic == node_topic(NODE) and m.json()["executions"] == {"running": 1},
                what="the node status with one running execution",
            )
        ).json()
        assert status["labels"] == {"zone": "eu-1a", "example.com/gpu": "", "tier": "edge"}
        assert status["max_executions"] == 5
        assert status["cordoned"] is False
        capacity = status["capacity"]
        assert set(capacity) == {"cpus", "memory_bytes", "state_disk_free_bytes"}
        here = measure(state_dir)
        assert capacity["cpus"] == here.cpus >= 1
        assert capacity["memory_bytes"] == here.memory_bytes
        free = shutil.disk_usage(state_dir).free
        assert abs(capacity["state_disk_free_bytes"] - free) <= 0.05 * free
        capabilities = status["capabilities"]
        assert {"engines", "probes", "publishers", "logs", "containment", "limits"} <= set(capabilities)
        assert capabilities["engines"] == ["process"]

        table = await cli("nodes", *broker_args(broker))
        assert table.code == 0, table.output
        header, row = table.stdout.splitlines()
        assert header.split() == ["NODE", "STATE", "VERSION", "LABELS", "EXECUTIONS", "CAPACITY", "CORDONED"]
        assert row.startswith(f"{NODE}  online  {status['agent_version']}")
        assert "example.com/gpu,tier=edge,zone=eu-1a" in row
        assert "running=1 (max 5)" in row
        assert f"{capacity['cpus']} cpu" in row
        assert "disk free" in row
        assert row.endswith("no")

        as_json = await cli("nodes", "-o", "json", *broker_args(broker))
        assert as_json.code == 0, as_json.output
        (document,) = json.loads(as_json.stdout)
        assert document["node_id"] == NODE
        assert document["labels"] == status["labels"]
        assert document["executions"] == {"running": 1}

        other = await cli("nodes", "--node", "node-9", *broker_args(broker))
        assert (other.code, other.stdout) == (0, "")
        assert "No nodes named node-9." in other.stderr


async def test_nodes_with_no_node_and_unlimited_default(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    empty = await cli("nodes", *broker_args(broker))
    assert (empty.code, empty.stdout) == (0, "")
    assert "No nodes." in empty.stderr
    async with running_agent(config_for(broker, state_dir)):
        status = (await watching.wait_for(lambda m: m.topic == node_topic(NODE), what="node status")).json()
    assert (status["labels"], status["max_executions"], status["cordoned"]) == ({}, None, False)

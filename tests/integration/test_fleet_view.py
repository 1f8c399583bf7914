"""The CLI's view of a fleet past the broker's per-client queue, on a stock mosquitto.

A stock mosquitto serves a QoS 1 subscription at most ``max_queued_messages`` (1000) plus 20 retained
messages, and at QoS 0 drops what its socket cannot take. The statuses are published straight to the
broker (as agents would have: a retained status per execution, an ``online`` node status counting them),
no agent needed; ``get``, ``job``, ``watch`` and the generation fence of ``apply`` must show them all, or
say on stderr that they cannot.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from tests.integration.test_operator_cli import broker_args, cli
from tests.support.broker import Broker

PREFIX = "reconcile/v1"
NODES = 10
PER_NODE = 1000  # 10,000 in all: ten times what one QoS 1 subscription is served


def status(node: str, execution: str, job: str, revision: int = 3) -> dict[str, Any]:
    """An execution status about the size an agent publishes (about 1 KiB with its output tail)."""
    return {
        "execution_id": execution,
        "job_id": job,
        "node_id": node,
        "revision": revision,
        "observed_generation": 1,
        "created_at": "2026-11-22T10:00:00.000000Z",
        "updated_at": "2026-11-22T10:00:12.000000Z",
        "stable_at": "2026-11-22T10:00:11.900000Z",
        "desired_state": {"state_type": "running", "message": "", "details": {}},
        "observed_state": {"state_type": "running", "message": "stable", "details": {}},
        "previous_execution_id": None,
        "next_execution_id": None,
        "compute_reference": "pid:41122",
        "restart_count": 0,
        "run_output": {
            "stdout": "serving on port 8080\n" * 25,
            "stdout_truncated": False,
            "stderr": "",
            "stderr_truncated": False,
            "exit_code": None,
            "error": None,
        },
        "published_results": None,
        "details": {},
    }


def node_status(node: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"node_id": node, "state": "online", "executions": counts, "instance_id": uuid.uuid4().hex}


async def publish_all(broker: Broker, messages: list[tuple[str, dict[str, Any] | bytes]]) -> None:
    """Retained, in a tight loop at QoS 0; one QoS 1 publish after them, so all are in once it is acked."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, payload in messages:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            await client.publish(topic, body, qos=0, retain=True)
        await client.publish(f"{PREFIX}/test/sync", b"", qos=1)


def fleet() -> list[tuple[str, dict[str, Any] | bytes]]:
    messages: list[tuple[str, dict[str, Any] | bytes]] = []
    for n in range(NODES):
        node = f"node-{n}"
        for e in range(PER_NODE):
            execution = f"web-{n}-{e:04d}"
            messages.append(
                (f"{PREFIX}/nodes/{node}/executions/{execution}/status", status(node, execution, "web"))
            )
        messages.append((f"{PREFIX}/nodes/{node}/status", node_status(node, {"running": PER_NODE})))
    return messages


@pytest.mark.timeout(300)
async def test_get_job_and_watch_show_ten_thousand_retained_statuses(stock: Broker) -> None:
    await publish_all(stock, fleet())

    got = await cli("get", *broker_args(stock), "-o", "json")
    assert got.code == 0, got.output
    rows = json.loads(got.stdout)
    assert len(rows) == NODES * PER_NODE
    assert len({(r["node_id"], r["execution_id"]) for r in rows}) == NODES * PER_NODE
    assert "reconcile-agent:" not in got.stderr, got.stderr

    node = await cli("get", *broker_args(stock), "--node", "node-3")
    assert node.code == 0, node.output
    assert len(node.stdout.splitlines()) == 1 + PER_NODE  # the header, then one row each

    job = await cli("job", "web", *broker_args(stock), "-o", "json")
    assert job.code == 0, job.output
    assert len(json.loads(job.stdout)["executions"]) == NODES * PER_NODE
    assert "reconcile-agent:" not in job.stderr, job.stderr

    watched = await cli("watch", *broker_args(stock), "--timeout", "0.1")
    assert watched.code == 0, watched.output
    table = watched.stdout.strip().splitlines()
    assert len(table) == 1 + NODES * PER_NODE
    assert "watching" in watched.stderr
    assert "reconcile-agent:" not in watched.stderr


async def test_a_node_whose_statuses_fall_short_of_its_count_is_named_on_stderr(stock: Broker) -> None:
    # Its agent counts 1500, the broker holds 1200: what a broker that dropped some looks like.
    messages: list[tuple[str, dict[str, Any] | bytes]] = [
        (f"{PREFIX}/nodes/node-x/executions/e-{e}/status", status("node-x", f"e-{e}", "x"))
        for e in range(1200)
    ]
    messages.append(
        (f"{PREFIX}/nodes/node-x/status", node_status("node-x", {"running": 1000, "failed": 500}))
    )
    await publish_all(stock, messages)

    got = await cli("get", *broker_args(stock), "-o", "json")
    assert got.code == 0, got.output
    assert len(json.loads(got.stdout)) == 1200
    assert "node node-x: 1200 of the 1500 executions its agent counts" in got.stderr, got.stderr


async def test_a_small_node_needs_no_count_and_a_bad_node_status_is_no_count(stock: Broker) -> None:
    messages: list[tuple[str, dict[str, Any] | bytes]] = [
        (f"{PREFIX}/nodes/n-{n}/executions/e/status", status(f"n-{n}", "e", "j")) for n in range(3)
    ]
    messages += [
        (f"{PREFIX}/nodes/n-0/status", b"not json"),
        (f"{PREFIX}/nodes/n-1/status", {"state": "online", "executions": {"running": "many"}}),
        (f"{PREFIX}/nodes/n-2/status", {"state": "online", "executions": [1, 2]}),
        (f"{PREFIX}/nodes/n-3/status", {"state": "online", "executions": {"running": -4}}),
    ]
    await publish_all(stock, messages)
    got = await cli("get", *broker_args(stock), "-o", "json")
    assert got.code == 0, got.output
    assert sorted(r["node_id"] for r in json.loads(got.stdout)) == ["n-0", "n-1", "n-2"]
    assert got.stderr == "", got.stderr


@pytest.mark.timeout(300)
async def test_apply_fences_the_generation_of_more_executions_than_the_broker_queues(
    stock: Broker, tmp_path: Path
) -> None:
    count = 510  # 1021 exact topics: more than one pass can be sure of, read in two
    await publish_all(
        stock,
        [
            (
                f"{PREFIX}/nodes/node-a/executions/e-{e}/status",
                {**status("node-a", f"e-{e}", "j"), "observed_generation": 5},
            )
            for e in range(count)
        ],
    )
    documents = [
        {
            "node_id": "node-a",
            "execution_id": f"e-{e}",
            "desired_state": {"state_type": "running"},
            "spec": {"command": ["sleep", "600"]},
        }
        for e in range(count)
    ]
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    applied = await cli("apply", str(path), *broker_args(stock), "-o", "json")
    assert applied.code == 0, applied.output
    assert {r["generation"] for r in json.loads(applied.stdout)} == {6}

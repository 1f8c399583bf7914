"""Cordon end to end (issue 14 item 6): ``reconcile-agent cordon``/``uncordon`` against a real agent on a
real broker, with real workloads; the cordon survives agent restarts; bad control documents are
rejected with an event and change nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from agent import schema
from agent.control import parse_control
from agent.core.control import NodeControl, on_control
from agent.store import Store
from tests.integration.test_operator_cli import broker_args, cli
from tests.integration.test_state_schema import NODE as FIXTURE_NODE
from tests.integration.test_state_schema import fixture_copy, meta
from tests.support import fuzz
from tests.support.agent import (
    PREFIX,
    StatusLog,
    config_for,
    desired,
    desired_topic,
    events_topic,
    node_topic,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
    wait_rejected,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe

NODE = "node-1"
CONTROL = f"{PREFIX}/nodes/{NODE}/control"


def events_of(probe: Probe, kind: str, after: int = 0) -> list[dict[str, Any]]:
    return [
        m.json() for m in probe.messages[after:] if m.topic == events_topic(NODE) and m.json()["type"] == kind
    ]


async def cordoned_is(probe: Probe, value: bool, after: int = 0) -> dict[str, Any]:
    message = await probe.wait_for(
        lambda m: m.topic == node_topic(NODE) and m.json()["cordoned"] is value,
        after=after,
        what=f"node status cordoned={value}",
    )
    document: dict[str, Any] = message.json()
    return document


async def test_a_cordoned_node_keeps_what_it_runs_and_refuses_what_it_does_not_know(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "a"), desired("a", command=sleeper()), retain=True)
        await watching.publish(desired_topic(NODE, "s"), desired("s", command=sleeper()), retain=True)
        a = await StatusLog(watching, NODE, "a").wait(lambda d: d["stable_at"] is not None, what="a stable")
        await StatusLog(watching, NODE, "s").wait(lambda d: d["stable_at"] is not None, what="s stable")

        done = await cli("cordon", NODE, *broker_args(broker))
        assert done.code == 0, done.output
        assert done.stdout == f"{NODE}  cordoned (control generation 1)\n"
        assert json.loads((await watching.wait_for_topic(CONTROL)).payload) == {
            "generation": 1,
            "cordoned": True,
        }
        await cordoned_is(watching, True)
        nodes = await cli("nodes", "-o", "json", *broker_args(broker))
        assert json.loads(nodes.stdout)[0]["cordoned"] is True

        # New executions are refused, updates included: the Rejection rules (event, failed status).
        mark = watching.mark()
        await watching.publish(desired_topic(NODE, "new"), desired("new", command=sleeper()), retain=True)
        status = await wait_rejected(watching, NODE, "new", "node is cordoned", mark)
        assert status["observed_state"]["state_type"] == "failed"
        assert status["details"]["rejected"]["generation"] == 1
        update = desired("a2", command=sleeper()) | {"previous_execution_id": "a"}
        await watching.publish(desired_topic(NODE, "a2"), update, retain=True)
        await wait_rejected(watching, NODE, "a2", "node is cordoned", mark)

        # What it knows keeps working: a stays, s stops, and a stopped s may run again.
        await watching.publish(desired_topic(NODE, "s"), desired("s", 2, "stopped"), retain=True)
        await StatusLog(watching, NODE, "s").wait_state("stopped", after=mark)
        await watching.publish(desired_topic(NODE, "s"), desired("s", 3, command=sleeper()), retain=True)
        await StatusLog(watching, NODE, "s").wait(
            lambda d: d["observed_generation"] == 3 and d["observed_state"]["state_type"] == "running",
            what="s running again",
        )
        assert pid_alive(pid_of(a))
        assert StatusLog(watching, NODE, "a").documents()[-1]["revision"] == a["revision"], "a untouched"

        done = await cli("uncordon", NODE, *broker_args(broker))
        assert done.code == 0, done.output
        assert done.stdout == f"{NODE}  uncordoned (control generation 2)\n"
        await cordoned_is(watching, False)
        await watching.publish(desired_topic(NODE, "new"), desired("new", 2, command=sleeper()), retain=True)
        await StatusLog(watching, NODE, "new").wait(lambda d: d["stable_at"] is not None, what="new admitted")


async def test_the_cordon_survives_a_restart_without_its_retained_document(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir)
    async with running_agent(config):
        await watching.publish(CONTROL, {"generation": 5, "cordoned": True}, retain=True)
        await cordoned_is(watching, True)
    await watching.publish(CONTROL, b"", retain=True)  # the broker forgets it while the agent is away
    mark = watching.mark()
    async with running_agent(config):
        online = await watching.wait_for(
            lambda m: m.topic == node_topic(NODE) and m.json()["state"] == "online", after=mark, what="online"
        )
        assert online.json()["cordoned"] is True, "from the store"
        await watching.publish(desired_topic(NODE, "n"), desired("n", command=sleeper()), retain=True)
        await wait_rejected(watching, NODE, "n", "node is cordoned", mark)
        # The stored generation orders what comes next: 5 is not above 5, 6 is.
        await watching.publish(CONTROL, {"generation": 5, "cordoned": False}, retain=True)
        stale = await watching.wait_for(
            lambda m: (
                m.topic == events_topic(NODE)
                and m.json()["type"] == "control_rejected"
                and m.json()["generation"] == 5
            ),
            after=mark,
        )
        # The clearing reached the agent's persistent session while it was away: reported, changed nothing.
        (cleared,) = [e for e in events_of(watching, "control_rejected", mark) if e["generation"] is None]
        assert cleared["reason"].startswith("empty control document")
        assert "generation 5 is not above the node's 5" in stale.json()["reason"]
        done = await cli("uncordon", NODE, *broker_args(broker))
        assert done.code == 0, done.output
        assert "control generation 6" in done.stdout


BAD_CONTROL: list[tuple[bytes, str]] = [
    (b"not json", "payload is not JSON"),
    (b'{"generation": 1, "cordoned": false}', "generation 1 is not above the node's 3"),
    (b'{"generation": "4", "cordoned": false}', "generation: Input should be a valid integer"),
    (b'{"generation": 4.5, "cordoned": false}', "generation: Input should be a valid integer"),
    (b'{"generation": 4, "cordoned": false, "why": "x"}', "why: unknown field"),
    (b'{"generation": 4, "cordoned": "no"}', "cordoned: Input should be a valid boolean"),
    (b'{"generation": 4}', "cordoned: Field required"),
    (b"", "empty control document"),
]


async def test_bad_control_documents_are_rejected_and_change_nothing(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)) as agent:
        await watching.publish(desired_topic(NODE, "a"), desired("a", command=sleeper()), retain=True)
        a = await StatusLog(watching, NODE, "a").wait(lambda d: d["stable_at"] is not None, what="a stable")
        await watching.publish(CONTROL, {"generation": 3, "cordoned": True}, retain=True)
        await cordoned_is(watching, True)
        for payload, reason in BAD_CONTROL:
            mark = watching.mark()
            await watching.publish(CONTROL, payload, retain=True)
            event = await watching.wait_for(
                lambda m: m.topic == events_topic(NODE) and m.json()["type"] == "control_rejected",
                after=mark,
                what=f"control_rejected for {payload!r}",
            )
            assert reason in event.json()["reason"], event.json()
            assert event.json()["execution_id"] is None
            assert (agent.runtime.control.generation, agent.runtime.control.cordoned) == (3, True)
        # The same bad payload again (a redelivery) is reported once; a good one still works after all that.
        mark = watching.mark()
        await watching.publish(CONTROL, b"not json", retain=True)
        await watching.publish(CONTROL, b"not json", retain=True)
        await watching.publish(CONTROL, {"generation": 4, "cordoned": False}, retain=True)
        await cordoned_is(watching, False, mark)
        assert len(events_of(watching, "control_rejected", mark)) == 1
        assert pid_alive(pid_of(a))
        assert StatusLog(watching, NODE, "a").documents()[-1]["revision"] == a["revision"], "a untouched"


async def test_cordon_of_a_node_that_is_not_online_publishes_and_says_so(broker: Broker) -> None:
    done = await cli("cordon", "node-7", *broker_args(broker))
    assert done.code == 0, done.output
    assert (
        "node node-7 has never connected (no node status); its agent applies this once it connects"
        in done.stderr
    )
    again = await cli("cordon", "node-7", *broker_args(broker))
    assert "control generation 2, published" in again.stdout
    bad = await cli("cordon", "bad/node", *broker_args(broker))
    assert bad.code == 2


def test_the_cordon_is_a_meta_row_so_a_schema_4_state_opens_uncordoned_and_keeps_the_cordon(
    tmp_path: Path,
) -> None:
    """No schema change (docs/upgrade.md): the committed schema-4 fixture, made before cordons existed,
    reads as never cordoned and keeps it once set; the cordon itself needed no schema change."""
    state_dir = fixture_copy(4, tmp_path)
    store = Store(state_dir / "agent.db", FIXTURE_NODE)
    try:
        assert store.control() == NodeControl()
        store.commit_control(NodeControl(generation=2, cordoned=True))
    finally:
        store.close()
    again = Store(state_dir / "agent.db", FIXTURE_NODE)
    try:
        assert again.control() == NodeControl(generation=2, cordoned=True)
    finally:
        again.close()
    # Schema 5 (the retained copies of issue 12) came later: the cordon row rides through its migration.
    assert meta(state_dir)["schema_version"] == str(schema.VERSION)
    assert json.loads(meta(state_dir)["control"]) == {
        "generation": 2,
        "cordoned": True,
        "rejected_digest": None,
    }


async def test_a_storm_of_fuzzed_control_documents_changes_exactly_what_the_core_says(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    """300 seeded payloads (tests/support/fuzz.py) at a live agent: it keeps running its workload, ends in
    the control state the pure core computes for the same sequence, and reports each rejection once."""
    rng = random.Random(1414)
    payloads = [fuzz.control_payload(rng) for _ in range(300)]
    expected, reasons = NodeControl(), 0
    for payload in payloads:
        expected, reason = on_control(expected, parse_control(payload))
        reasons += reason is not None
    async with running_agent(config_for(broker, state_dir)) as agent:
        await watching.publish(desired_topic(NODE, "a"), desired("a", command=sleeper()), retain=True)
        a = await StatusLog(watching, NODE, "a").wait(lambda d: d["stable_at"] is not None, what="a stable")
        mark = watching.mark()
        for payload in payloads:
            await watching.publish(CONTROL, payload, retain=True)
        final = {"generation": expected.generation + 1, "cordoned": not expected.cordoned}
        await watching.publish(CONTROL, final, retain=True)
        await cordoned_is(watching, final["cordoned"], mark)
        assert (agent.runtime.control.generation, agent.runtime.control.cordoned) == (
            final["generation"],
            final["cordoned"],
        )
        assert len(events_of(watching, "control_rejected", mark)) == reasons
        assert pid_alive(pid_of(a))
        assert StatusLog(watching, NODE, "a").documents()[-1]["revision"] == a["revision"], "a untouched"

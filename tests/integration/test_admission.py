"""Admission end to end (issue 14 item 5): ``limits.max_executions`` on a real agent, broker and workloads.

A full node rejects new executions (the Rejection rules), stopping and deleting always work, an update
takes its predecessor's place (so a full node can still be updated) and a failed update rolls back as
usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import AgentConfig, LimitsConfig
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
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


def limited(broker: Broker, state_dir: Path, limit: int) -> AgentConfig:
    return config_for(broker, state_dir).model_copy(update={"limits": LimitsConfig(max_executions=limit)})


async def stable(probe: Probe, execution_id: str, after: int = 0) -> dict[str, Any]:
    log = StatusLog(probe, NODE, execution_id)
    message = await probe.wait_for(
        lambda m: (
            m.topic == log.topic
            and bool(m.payload)
            and m.json()["observed_state"]["state_type"] == "running"
            and m.json()["stable_at"] is not None
        ),
        after=after,
        what=f"{execution_id} running and stable",
    )
    document: dict[str, Any] = message.json()
    return document


async def test_a_full_node_rejects_new_executions_and_stop_and_delete_free_places(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(limited(broker, state_dir, 2)):
        for eid in ("a", "b"):
            await watching.publish(desired_topic(NODE, eid), desired(eid, command=sleeper()), retain=True)
        a = await stable(watching, "a")
        await stable(watching, "b")
        await watching.publish(desired_topic(NODE, "c"), desired("c", command=sleeper()), retain=True)
        status = await wait_rejected(watching, NODE, "c", "node is full: max_executions 2")
        assert status["observed_state"] == {
            "state_type": "failed",
            "message": "desired document rejected: node is full: max_executions 2",
            "details": {},
        }
        # A stop always works, and frees a place: the same execution, at its next generation, is admitted.
        mark = watching.mark()
        await watching.publish(desired_topic(NODE, "b"), desired("b", 2, "stopped"), retain=True)
        await StatusLog(watching, NODE, "b").wait_state("stopped", after=mark)
        await watching.publish(desired_topic(NODE, "c"), desired("c", 2, command=sleeper()), retain=True)
        await stable(watching, "c", mark)
        # Full again: b, stopped, may not run again by the back door; deleting it always works.
        mark = watching.mark()
        await watching.publish(desired_topic(NODE, "b"), desired("b", 3, command=sleeper()), retain=True)
        await wait_rejected(watching, NODE, "b", "node is full: max_executions 2", mark)
        await watching.publish(desired_topic(NODE, "b"), b"", retain=True)
        await watching.wait_for(
            lambda m: m.topic == StatusLog(watching, NODE, "b").topic and not m.payload,
            after=mark,
            what="b gone",
        )
        node = await watching.wait_for(
            lambda m: m.topic == node_topic(NODE) and m.json()["executions"] == {"running": 2},
            what="two running",
        )
        assert node.json()["max_executions"] == 2
        assert pid_alive(pid_of(a))


async def test_documents_that_arrive_together_get_one_place_each_in_order(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(limited(broker, state_dir, 1)):
        for eid in ("x", "y", "z"):
            await watching.publish(desired_topic(NODE, eid), desired(eid, command=sleeper()), retain=True)
        await stable(watching, "x")
        await wait_rejected(watching, NODE, "y", "node is full: max_executions 1")
        await wait_rejected(watching, NODE, "z", "node is full: max_executions 1")
        assert StatusLog(watching, NODE, "y").states() == ["failed"], "never started"


async def test_a_full_node_can_be_updated_and_rolls_back_a_failed_update(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(limited(broker, state_dir, 1)):
        await watching.publish(desired_topic(NODE, "p"), desired("p", command=sleeper()), retain=True)
        await stable(watching, "p")
        # An update takes p's place: admitted although the node is full; p stops for it.
        mark = watching.mark()
        update = desired("n", command=sleeper()) | {"previous_execution_id": "p"}
        await watching.publish(desired_topic(NODE, "n"), update, retain=True)
        await stable(watching, "n", mark)
        stopped = await StatusLog(watching, NODE, "p").wait_state("stopped", after=mark)
        assert stopped["next_execution_id"] == "n"
        await watching.publish(desired_topic(NODE, "x"), desired("x", command=sleeper()), retain=True)
        await wait_rejected(watching, NODE, "x", "node is full: max_executions 1", mark)
        # A failed update of n rolls back to n as usual, on a node that stays full.
        mark = watching.mark()
        # A window it never lives through: m fails before it is stable, however loaded the machine.
        failing = desired("m", command=["sh", "-c", "exit 3"], window_s=20) | {"previous_execution_id": "n"}
        await watching.publish(desired_topic(NODE, "m"), failing, retain=True)
        await StatusLog(watching, NODE, "m").wait_state("failed", after=mark)
        back = await stable(watching, "n", mark)
        assert back["details"]["rollback"]["from"] == "m"
        await watching.publish(desired_topic(NODE, "x"), desired("x", 2, command=sleeper()), retain=True)
        await wait_rejected(watching, NODE, "x", "node is full: max_executions 1", mark)

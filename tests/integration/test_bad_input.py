"""Bad desired documents: each is rejected loudly (event + status), the agent stays up, and nothing that
already runs is touched. Real broker, in-process agent, real workloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, LimitsConfig
from agent.daemon import Agent
from agent.protocol import parse_desired
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    events_topic,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
    status_topic,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe

NODE = "node-1"
KEEPER = "keeper"  # a valid execution already running: bad input elsewhere must never touch it
BAD = "bad"
SMALL_LIMIT = 1024


def rejections(probe: Probe, execution_id: str | None, node: str = NODE) -> list[dict[str, Any]]:
    """Distinct rejection events: delivery is at least once, so an exact copy is the same event."""
    payloads = dict.fromkeys(
        m.payload
        for m in probe.messages_on(events_topic(node))
        if m.json()["type"] == "desired_rejected" and m.json()["execution_id"] == execution_id
    )
    return [json.loads(p) for p in payloads]


async def wait_rejection(probe: Probe, execution_id: str | None, after: int = 0) -> dict[str, Any]:
    message = await probe.wait_for(
        lambda m: (
            m.topic == events_topic(NODE)
            and m.json()["type"] == "desired_rejected"
            and m.json()["execution_id"] == execution_id
        ),
        after=after,
        what=f"desired_rejected for {execution_id}",
    )
    event: dict[str, Any] = message.json()
    return event


async def fence(probe: Probe, name: str) -> None:
    """The agent handles messages in order: once this one is seen, everything published before was too."""
    await probe.publish(desired_topic(NODE, name), desired(name, 1, "pending", sleeper()))
    await StatusLog(probe, NODE, name).wait_state("pending")


@dataclass
class Keeper:
    log: StatusLog
    pid: int
    revisions: list[int]

    def assert_untouched(self) -> None:
        assert self.log.revisions() == self.revisions, "a bad document elsewhere changed the keeper's status"
        assert self.log.states()[-1] == "running"
        assert pid_of(self.log.documents()[-1]) == self.pid
        assert pid_alive(self.pid)


async def start_keeper(probe: Probe) -> Keeper:
    await probe.publish(desired_topic(NODE, KEEPER), desired(KEEPER, command=sleeper()), retain=True)
    log = StatusLog(probe, NODE, KEEPER)
    pid = pid_of(await log.wait_state("running"))
    return Keeper(log, pid, log.revisions())


@pytest.fixture
async def agent_with_keeper(
    broker: Broker, watching: Probe, state_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Agent, Keeper]]:
    config: AgentConfig = config_for(broker, state_dir)
    limit = getattr(request, "param", None)
    if limit is not None:
        config = config.model_copy(update={"limits": LimitsConfig(max_payload_bytes=limit)})
    async with running_agent(config) as agent:
        keeper = await start_keeper(watching)
        yield agent, keeper


def doc(**overrides: Any) -> dict[str, Any]:
    document = desired(BAD, command=sleeper())
    document.update(overrides)
    return document


def with_spec(**spec: Any) -> dict[str, Any]:
    document = doc()
    document["spec"] = {**document["spec"], **spec}
    return document


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


# (payload, generation reported in the rejection, words the reason must contain)
CASES: dict[str, tuple[bytes, int | None, tuple[str, ...]]] = {
    "not-json": (b'{"execution_id": "bad", generation', None, ("not JSON",)),
    "not-utf8": (b"\xff\xfe\x00", None, ("not JSON",)),
    "json-array": (encoded([doc()]), None, ("not an object",)),
    "json-string": (encoded("bad"), None, ("not an object",)),
    "execution-id-mismatch": (encoded(doc(execution_id="other")), 1, ("execution_id", "other")),
    "generation-0": (encoded(doc(generation=0)), None, ("generation",)),
    "generation-negative": (encoded(doc(generation=-4)), None, ("generation",)),
    "generation-string": (encoded(doc(generation="2")), None, ("generation",)),
    "generation-float": (encoded(doc(generation=1.5)), None, ("generation",)),
    "generation-missing": (
        encoded({k: v for k, v in doc().items() if k != "generation"}),
        None,
        ("generation",),
    ),
    "unknown-top-level-field": (encoded(doc(bogus=1)), 1, ("bogus", "unknown field")),
    "unknown-spec-field": (encoded(with_spec(bogus=1)), 1, ("spec.bogus", "unknown field")),
    "unknown-nested-spec-field": (
        encoded(with_spec(restart={"policy": "never", "retries": 2})),
        1,
        ("spec.restart.retries", "unknown field"),
    ),
    "empty-command": (encoded(with_spec(command=[])), 1, ("spec.command",)),
    "command-is-a-string": (encoded(with_spec(command="sleep 300")), 1, ("spec.command",)),
    "running-without-spec": (encoded({k: v for k, v in doc().items() if k != "spec"}), 1, ("spec",)),
    "bad-desired-state": (
        encoded(doc(desired_state={"state_type": "started"})),
        1,
        ("desired_state.state_type",),
    ),
    "slash-in-execution-id": (encoded(doc(execution_id="a/b")), 1, ("execution_id", "'/'")),
    "plus-in-job-id": (encoded(doc(job_id="web+1")), 1, ("job_id", "'+'")),
    "hash-in-previous-execution-id": (
        encoded(doc(previous_execution_id="#")),
        1,
        ("previous_execution_id", "'#'"),
    ),
    # What exec or chdir would refuse is refused on arrival, naming the field (agent/exec_limits.py).
    "nul-in-command": (encoded(with_spec(command=["sleep", "1\0"])), 1, ("spec.command[1]", "NUL")),
    "nul-in-env-value": (encoded(with_spec(env={"A": "x\0y"})), 1, ("spec.env['A']", "NUL")),
    "nul-in-env-name": (encoded(with_spec(env={"A\0B": "x"})), 1, ("spec.env", "NUL")),
    "empty-env-name": (encoded(with_spec(env={"": "x"})), 1, ("spec.env", "empty")),
    "equals-in-env-name": (encoded(with_spec(env={"A=B": "x"})), 1, ("spec.env['A=B']", "'='")),
    "lone-surrogate-in-command": (
        encoded(with_spec(command=["echo", "\ud800"])),
        1,
        ("spec.command[1]", "surrogate"),
    ),
    "argument-too-long": (
        encoded(with_spec(command=["echo", "x" * 140_000])),
        1,
        ("spec.command[1]", "131071"),
    ),
    "relative-working-dir": (encoded(with_spec(working_dir="tmp")), 1, ("spec.working_dir", "absolute")),
    "overlong-working-dir": (
        encoded(with_spec(working_dir="/" + "a/" * 2500)),
        1,
        ("spec.working_dir", "4095"),
    ),
    "overlong-working-dir-component": (
        encoded(with_spec(working_dir="/" + "a" * 300)),
        1,
        ("spec.working_dir", "255"),
    ),
    "nul-in-working-dir": (encoded(with_spec(working_dir="/tmp\0")), 1, ("spec.working_dir", "NUL")),
    "nul-in-probe-command": (
        encoded(with_spec(probe={"exec": {"command": ["true\0"]}})),
        1,
        ("spec.probe.exec.command[0]", "NUL"),
    ),
}


@pytest.mark.parametrize(("payload", "generation", "words"), list(CASES.values()), ids=list(CASES))
async def test_bad_document_is_rejected_and_the_running_workload_is_untouched(
    agent_with_keeper: tuple[Agent, Keeper],
    watching: Probe,
    payload: bytes,
    generation: int | None,
    words: tuple[str, ...],
) -> None:
    _, keeper = agent_with_keeper
    await watching.publish(desired_topic(NODE, BAD), payload, retain=True)

    event = await wait_rejection(watching, BAD)
    status = await StatusLog(watching, NODE, BAD).wait_state("failed")
    await fence(watching, "fence")

    assert event["node_id"] == NODE
    assert event["generation"] == generation
    assert event["at"].endswith("Z")
    for word in words:
        assert word in event["reason"], event["reason"]
    # A status for the execution that was never accepted: failed, with the reason.
    assert status["revision"] == 1
    assert status["details"]["rejected"] == {
        "generation": generation,
        "reason": event["reason"],
        "at": status["details"]["rejected"]["at"],
    }
    assert status["details"]["rejected"]["at"].endswith("Z")
    assert event["reason"] in status["observed_state"]["message"]
    assert status["compute_reference"] is None
    assert StatusLog(watching, NODE, BAD).revisions() == [1]  # reported once, not on every hop
    keeper.assert_untouched()


@pytest.mark.parametrize("agent_with_keeper", [SMALL_LIMIT], indirect=True)
async def test_payload_over_the_limit_is_rejected_unread(
    agent_with_keeper: tuple[Agent, Keeper], watching: Probe
) -> None:
    agent, keeper = agent_with_keeper
    assert agent.config.limits.max_payload_bytes == SMALL_LIMIT
    big = doc()
    big["desired_state"]["message"] = "x" * 2 * SMALL_LIMIT  # valid in every other respect
    payload = encoded(big)

    await watching.publish(desired_topic(NODE, BAD), payload, retain=True)
    event = await wait_rejection(watching, BAD)
    status = await StatusLog(watching, NODE, BAD).wait_state("failed")
    await fence(watching, "fence")

    assert event["generation"] is None  # unread: its generation is unknown
    assert f"over the limit of {SMALL_LIMIT}" in event["reason"]
    assert str(len(payload)) in event["reason"]
    assert status["details"]["rejected"]["generation"] is None
    keeper.assert_untouched()


async def test_a_bad_document_for_the_running_execution_itself_does_not_touch_it(
    agent_with_keeper: tuple[Agent, Keeper], watching: Probe
) -> None:
    _, keeper = agent_with_keeper
    mark = watching.mark()
    await watching.publish(desired_topic(NODE, KEEPER), b"not json at all", retain=True)

    event = await wait_rejection(watching, KEEPER, after=mark)
    status = await keeper.log.wait(lambda d: "rejected" in d["details"], what="keeper rejection")
    await fence(watching, "fence")

    assert event["generation"] is None
    assert status["observed_state"]["state_type"] == "running"  # an accepted execution is not failed
    assert status["observed_generation"] == 1
    assert status["revision"] == keeper.revisions[-1] + 1
    assert pid_of(status) == keeper.pid
    assert pid_alive(keeper.pid)
    assert keeper.log.states()[-1] == "running"


async def test_a_spec_change_after_start_is_rejected_and_the_workload_keeps_running(
    agent_with_keeper: tuple[Agent, Keeper], watching: Probe
) -> None:
    _, keeper = agent_with_keeper
    mark = watching.mark()
    changed = desired(KEEPER, 2, command=["sleep", "301"])
    await watching.publish(desired_topic(NODE, KEEPER), changed, retain=True)

    event = await wait_rejection(watching, KEEPER, after=mark)
    status = await keeper.log.wait(lambda d: "rejected" in d["details"], what="keeper rejection")
    await fence(watching, "fence")

    assert event["generation"] == 2
    assert "spec" in event["reason"]
    assert "previous_execution_id" in event["reason"]
    assert status["details"]["rejected"]["generation"] == 2
    assert status["details"]["rejected"]["reason"] == event["reason"]
    assert status["observed_state"]["state_type"] == "running"
    assert status["observed_generation"] == 1  # still acting on generation 1
    assert pid_of(status) == keeper.pid
    assert pid_alive(keeper.pid)
    assert keeper.log.revisions() == [*keeper.revisions, keeper.revisions[-1] + 1]
    assert len(rejections(watching, KEEPER)) == 1

    # The same generation again (a retained redelivery or a resend) is not reported a second time...
    await watching.publish(desired_topic(NODE, KEEPER), changed, retain=True)
    await fence(watching, "fence-2")
    assert len(rejections(watching, KEEPER)) == 1
    # ... and a valid later generation (stop) is still obeyed: the rejection did not wedge the execution.
    await watching.publish(desired_topic(NODE, KEEPER), desired(KEEPER, 3, "stopped", sleeper()), retain=True)
    stopped = await keeper.log.wait_state("stopped")
    assert "rejected" not in stopped["details"]
    assert not pid_alive(keeper.pid)


@pytest.mark.parametrize(
    "execution_id",
    ["has space", "x" * 129, "ünïcode"],
    ids=["space", "129-chars", "non-ascii"],
)
async def test_a_bad_execution_id_in_the_topic_gets_only_an_event(
    agent_with_keeper: tuple[Agent, Keeper], watching: Probe, execution_id: str
) -> None:
    _, keeper = agent_with_keeper
    topic = desired_topic(NODE, execution_id)
    await watching.publish(topic, desired(execution_id, command=sleeper()), retain=True)

    event = await wait_rejection(watching, None)
    await fence(watching, "fence")

    assert event["node_id"] == NODE
    assert event["generation"] is None
    assert "execution id" in event["reason"]
    assert execution_id in event["reason"] or repr(topic) in event["reason"]
    assert not watching.messages_on(status_topic(NODE, execution_id))  # no status can be made for it
    assert len(rejections(watching, None)) == 1
    keeper.assert_untouched()


def test_ids_with_topic_characters_are_rejected_inside_the_document() -> None:
    """`/`, `+` and `#` cannot be sent in a topic segment; inside a document they are refused by name."""
    for field in ("execution_id", "job_id", "previous_execution_id"):
        for bad in ("a/b", "a+b", "a#b", "+", "#", "", "x" * 129):
            parsed = parse_desired("ok", encoded(desired("ok", command=sleeper()) | {field: bad}), 262144)
            reason = getattr(parsed, "reason", None)
            assert reason is not None, f"{field}={bad!r} was accepted"
            assert reason.startswith(f"{field}:"), reason
    assert (
        getattr(parse_desired("ok", encoded(desired("ok", command=sleeper())), 262144), "reason", None)
        is None
    )


async def test_a_desired_document_for_another_node_produces_nothing_here(
    agent_with_keeper: tuple[Agent, Keeper], watching: Probe
) -> None:
    _, keeper = agent_with_keeper
    mark = watching.mark()
    await watching.publish(desired_topic("node-2", "x"), desired("x", command=sleeper()), retain=True)
    await watching.publish(desired_topic("node-2", "y"), b"not json", retain=True)
    await watching.publish(
        desired_topic("node-2", KEEPER), desired(KEEPER, 2, "stopped", sleeper()), retain=True
    )
    await fence(watching, "fence")

    here = [m for m in watching.messages[mark:] if m.topic.startswith(f"reconcile/v1/nodes/{NODE}/")]
    fence_status = status_topic(NODE, "fence")
    assert {m.topic for m in here} <= {
        fence_status,
        desired_topic(NODE, "fence"),
        f"reconcile/v1/nodes/{NODE}/status",
    }, [str(m) for m in here]
    assert not watching.messages_on("reconcile/v1/nodes/node-2/status")
    assert not watching.messages_on("reconcile/v1/nodes/node-2/events")
    assert not watching.messages_on("reconcile/v1/nodes/node-2/executions/+/status")
    keeper.assert_untouched()


async def test_the_same_bad_retained_payload_is_not_reported_again_after_a_restart(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir)
    async with running_agent(config):
        keeper = await start_keeper(watching)
        await watching.publish(desired_topic(NODE, BAD), encoded(with_spec(bogus=1)), retain=True)
        await wait_rejection(watching, BAD)
        await StatusLog(watching, NODE, BAD).wait_state("failed")
    mark = watching.mark()
    async with running_agent(config):
        # The retained bad document is redelivered on the new subscription, before this fence.
        await fence(watching, "fence")
        assert len(rejections(watching, BAD)) == 1
        assert StatusLog(watching, NODE, BAD).revisions() == [1]
        keeper.assert_untouched()
        # The execution can still be fixed with a valid document.
        await watching.publish(desired_topic(NODE, BAD), desired(BAD, 2, "pending", sleeper()), retain=True)
        fixed = await StatusLog(watching, NODE, BAD).wait_state("pending", after=mark)
    assert fixed["revision"] == 2
    assert "rejected" not in fixed["details"]


async def test_a_bad_topic_id_is_not_reported_again_after_a_restart(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir)
    async with running_agent(config):
        await watching.publish(desired_topic(NODE, "has space"), desired("x", command=sleeper()), retain=True)
        await wait_rejection(watching, None)
    async with running_agent(config):
        await fence(watching, "fence")
    assert len(rejections(watching, None)) == 1

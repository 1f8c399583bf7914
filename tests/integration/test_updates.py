"""Updates and autonomous rollback end to end: a real broker, real workloads, the agent in-process (and as
a subprocess killed with -9 for the crash tests). docs/protocol.md, "Updates and rollback".

Ordering is proved on the probe's arrival order (one subscription, so one ordered stream per topic and the
agent's single ordered outbox across topics). Where a test needs something to happen *between* two agent
decisions it gates the workload on a file (a workload that exits when the file appears, or an exec probe
that passes only while it exists), never on a sleep. "Nothing happened" is proved with a fence: a new
execution's first status is published after everything the agent had queued before it.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from itertools import groupby
from pathlib import Path
from typing import Any

from tests.support.agent import (
    AgentProcess,
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
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until

NODE = "node-1"
FAILING = ["sh", "-c", "sleep 0.3; exit 3"]  # an update that fails long before its window (5 s) passes
WINDOW_S = 0.3
TIMEOUT = 20.0


# --- Helpers ----------------------------------------------------------------------------------------------


def service(eid: str, **spec: Any) -> dict[str, Any]:
    """A healthy long-running execution with a short window."""
    spec.setdefault("window_s", WINDOW_S)
    return desired(eid, command=sleeper(), **spec)


def update(eid: str, previous: str, command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    """N replacing ``previous``; a healthy service unless ``command`` says otherwise."""
    spec.setdefault("window_s", WINDOW_S)
    document = desired(eid, command=command or sleeper(), **spec)
    document.update(previous_execution_id=previous)
    return document


def failing_update(eid: str, previous: str, **spec: Any) -> dict[str, Any]:
    return update(eid, previous, FAILING, window_s=5.0, **spec)


def exits_3_when(flag: Path) -> list[str]:
    """A workload that fails (exit 3) only once ``flag`` exists: the test decides when N fails."""
    return ["sh", "-c", f'while [ ! -e "{flag}" ]; do sleep 0.05; done; exit 3']


def healthy_while(flag: Path) -> dict[str, Any]:
    """An exec probe that passes only while ``flag`` exists; failures never make it degraded in a test."""
    return {
        "exec": {"command": ["test", "-e", str(flag)]},
        "period_s": 0.1,
        "timeout_s": 2.0,
        "failure_threshold": 100000,
    }


async def publish(probe: Probe, document: dict[str, Any]) -> None:
    await probe.publish(desired_topic(NODE, document["execution_id"]), document, retain=True)


async def fence(probe: Probe, name: str = "fence") -> None:
    """Once this returns, every decision the agent had queued before has been made and published."""
    await probe.publish(desired_topic(NODE, name), desired(name, 1, "pending", sleeper()))
    await StatusLog(probe, NODE, name).wait_state("pending", timeout=TIMEOUT)


def index_of(probe: Probe, eid: str, state_type: str, after: int = 0) -> int:
    """Arrival index of the first status of ``eid`` in ``state_type`` from ``after`` on."""
    topic = status_topic(NODE, eid)
    for m in probe.messages[after:]:
        if m.topic == topic and m.payload and m.json()["observed_state"]["state_type"] == state_type:
            return m.index
    raise AssertionError(f"no {state_type} status of {eid} after #{after}")


def rollback_events(probe: Probe) -> list[dict[str, Any]]:
    """Every distinct rollback event (the same event published twice, byte for byte, counts once)."""
    seen: dict[bytes, dict[str, Any]] = {}
    for m in probe.messages_on(events_topic(NODE)):
        if m.json()["type"] == "rollback":
            seen.setdefault(m.payload, m.json())
    return list(seen.values())


def history(messages: list[Message], eid: str) -> list[dict[str, Any]]:
    """One document per revision, checking that revisions are 1..n and never carry two documents."""
    by_revision: dict[int, set[bytes]] = defaultdict(set)
    documents: dict[int, dict[str, Any]] = {}
    for m in messages:
        if m.topic == status_topic(NODE, eid) and m.payload:
            document = m.json()
            by_revision[document["revision"]].add(m.payload)
            documents[document["revision"]] = document
    numbers = sorted(by_revision)
    assert numbers == list(range(1, len(numbers) + 1)), f"{eid}: revisions {numbers}"
    for number, payloads in by_revision.items():
        assert len(payloads) == 1, f"{eid}: revision {number} published with different documents"
    return [documents[n] for n in numbers]


def transitions(documents: list[dict[str, Any]]) -> list[str]:
    """The observed state types with repeats (a new revision in the same state) folded."""
    return [state for state, _ in groupby(d["observed_state"]["state_type"] for d in documents)]


def pids(documents: list[dict[str, Any]]) -> list[int]:
    """Every distinct workload pid of an execution, in order of appearance."""
    seen: list[int] = []
    for d in documents:
        if d["compute_reference"] and (pid := pid_of(d)) not in seen:
            seen.append(pid)
    return seen


def rolled_back(document: dict[str, Any]) -> bool:
    return document["observed_state"]["state_type"] == "running" and "rollback" in document["details"]


# --- Hand-over -------------------------------------------------------------------------------------------


async def test_stop_first_stops_p_before_n_starts(broker: Broker, watching: Probe, state_dir: Path) -> None:
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        p_pid = pid_of(await p.wait_state("running", TIMEOUT))
        mark = watching.mark()
        await publish(watching, update("n", "p"))
        await n.wait_state("validating", TIMEOUT)  # the first status that names N's process
        assert not pid_alive(p_pid)
        n_running = await n.wait_state("running", TIMEOUT)
    # Order across the two streams: P is stopped (its workload reaped, exit code read) before N starts.
    p_stopped = index_of(watching, "p", "stopped", mark)
    n_starting = index_of(watching, "n", "starting")
    assert p_stopped < n_starting < index_of(watching, "n", "validating")
    assert index_of(watching, "p", "stopping", mark) < p_stopped
    assert not pid_alive(p_pid)
    n_pid = pid_of(n_running)
    assert n_pid != p_pid
    assert pid_alive(n_pid)
    assert transitions(history(watching.messages, "p")) == [
        "pending", "starting", "validating", "running", "stopping", "stopped",
    ]  # fmt: skip
    assert transitions(history(watching.messages, "n")) == ["pending", "starting", "validating", "running"]
    waiting = [d for d in n.documents() if d["observed_state"]["state_type"] == "pending"][-1]
    assert waiting["observed_state"]["message"] == "waiting for p to stop (update_strategy stop_first)"
    stopped = p.documents()[-1]
    assert stopped["observed_state"] == {
        "state_type": "stopped",
        "message": "stopped for the update to n",
        "details": {},
    }
    assert stopped["run_output"]["exit_code"] == 128 + signal.SIGTERM
    assert stopped["next_execution_id"] == "n"
    assert n_running["previous_execution_id"] == "p"
    assert n_running["next_execution_id"] is None
    assert rollback_events(watching) == []


async def test_start_first_runs_both_then_stops_p_once_n_is_stable(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    healthy = tmp_path / "n-healthy"  # N stays validating until the test says so
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        p_pid = pid_of(await p.wait_state("running", TIMEOUT))
        mark = watching.mark()
        await publish(watching, update("n", "p", update_strategy="start_first", probe=healthy_while(healthy)))
        n_pid = pid_of(await n.wait_state("validating", TIMEOUT))
        # Both run at once, and P knows it is being replaced.
        assert pid_alive(p_pid)
        assert pid_alive(n_pid)
        assert p.documents()[-1]["observed_state"]["state_type"] == "running"
        await p.wait(lambda d: d["next_execution_id"] == "n", TIMEOUT, what="p handed over to n")
        healthy.touch()
        await n.wait_state("running", TIMEOUT)
        stopped = await p.wait_state("stopped", TIMEOUT)
    # P was stopped only once N was stable.
    assert index_of(watching, "n", "running") < index_of(watching, "p", "stopping", mark)
    assert not pid_alive(p_pid)
    assert pid_alive(n_pid)
    assert stopped["observed_state"]["message"] == "stopped for the update to n"
    assert stopped["next_execution_id"] == "n"
    assert transitions(history(watching.messages, "n")) == ["pending", "starting", "validating", "running"]
    assert transitions(history(watching.messages, "p"))[-3:] == ["running", "stopping", "stopped"]
    assert rollback_events(watching) == []


async def test_unknown_previous_n_just_starts(broker: Broker, watching: Probe, state_dir: Path) -> None:
    n = StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, update("n", "ghost"))
        running = await n.wait_state("running", TIMEOUT)
        await fence(watching)
    assert pid_alive(pid_of(running))
    assert running["previous_execution_id"] == "ghost"
    assert transitions(history(watching.messages, "n")) == ["pending", "starting", "validating", "running"]
    # The agent knows nothing of ghost and says nothing about it.
    assert not watching.messages_on(status_topic(NODE, "ghost"))
    assert rollback_events(watching) == []


# --- Rollback -----------------------------------------------------------------------------------------------


async def test_stop_first_rollback_runs_p_again_with_a_new_process(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        first = await p.wait_state("running", TIMEOUT)
        await publish(watching, failing_update("n", "p"))
        again = await p.wait(rolled_back, TIMEOUT, what="p running again after the rollback")
        failed = await n.wait(lambda d: "rolled_back_to" in d["details"], TIMEOUT, what="n rolled back")
        await fence(watching)
    assert transitions(history(watching.messages, "p")) == [
        "pending", "starting", "validating", "running",  # P, first run
        "stopping", "stopped",  # for the update to N
        "starting", "validating", "running",  # the rollback
    ]  # fmt: skip
    assert pid_of(again) != pid_of(first)
    assert pid_alive(pid_of(again))
    assert not pid_alive(pid_of(first))
    assert pids(p.documents()) == [pid_of(first), pid_of(again)]
    assert again["stable_at"] == first["stable_at"]
    assert again["details"]["rollback"]["from"] == "n"
    assert again["details"]["rollback"]["at"].endswith("Z")
    assert again["next_execution_id"] == "n"
    starting = next(d for d in p.documents() if "rollback" in d["details"])
    assert starting["observed_state"]["state_type"] == "starting"
    assert starting["observed_state"]["message"] == "rolling back from n"
    assert failed["observed_state"]["state_type"] == "failed"
    assert failed["details"]["rolled_back_to"] == "p"
    assert failed["stable_at"] is None
    assert failed["run_output"]["exit_code"] == 3
    (event,) = rollback_events(watching)
    assert {k: event[k] for k in ("execution_id", "from", "to")} == {
        "execution_id": "p",
        "from": "n",
        "to": "p",
    }
    assert event["at"] == again["details"]["rollback"]["at"]


async def test_start_first_rollback_keeps_p_running(broker: Broker, watching: Probe, state_dir: Path) -> None:
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        first = await p.wait_state("running", TIMEOUT)
        await publish(watching, failing_update("n", "p", update_strategy="start_first"))
        again = await p.wait(rolled_back, TIMEOUT, what="p keeps running, rolled back to")
        failed = await n.wait(lambda d: "rolled_back_to" in d["details"], TIMEOUT, what="n rolled back")
        await fence(watching)
    # The same process throughout: P never stopped.
    assert transitions(history(watching.messages, "p")) == ["pending", "starting", "validating", "running"]
    assert pid_of(again) == pid_of(first)
    assert pid_alive(pid_of(first))
    assert pids(p.documents()) == [pid_of(first)]
    assert again["details"]["rollback"]["from"] == "n"
    assert again["next_execution_id"] == "n"
    assert failed["details"]["rolled_back_to"] == "p"
    assert not pid_alive(pid_of(failed))
    assert [e["from"] for e in rollback_events(watching)] == ["n"]


async def test_no_rollback_to_a_previous_that_was_never_stable(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p", window_s=60))  # validating throughout: never stable
        await p.wait_state("validating", TIMEOUT)
        await publish(watching, failing_update("n", "p"))
        await n.wait_state("failed", TIMEOUT)
        await fence(watching)
    documents = history(watching.messages, "p")
    assert transitions(documents) == ["pending", "starting", "validating", "stopping", "stopped"]
    assert documents[-1]["stable_at"] is None
    assert "rollback" not in documents[-1]["details"]
    assert not pid_alive(pid_of(documents[-1]))
    assert "rolled_back_to" not in history(watching.messages, "n")[-1]["details"]
    assert rollback_events(watching) == []


async def test_a_resurrected_p_that_fails_later_triggers_no_further_rollback(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    """P0 -> P -> N fails -> P runs again; P's new process is killed (policy never): P fails, that's all."""
    p0, p, n = (StatusLog(watching, NODE, e) for e in ("p0", "p", "n"))
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p0"))
        await p0.wait_state("running", TIMEOUT)
        await publish(watching, update("p", "p0"))
        await p.wait_state("running", TIMEOUT)
        await p0.wait_state("stopped", TIMEOUT)
        p0_before = history(watching.messages, "p0")
        await publish(watching, failing_update("n", "p"))
        again = await p.wait(rolled_back, TIMEOUT, what="p running again")
        await n.wait(lambda d: "rolled_back_to" in d["details"], TIMEOUT, what="n rolled back")
        os.kill(pid_of(again), signal.SIGKILL)
        failed = await p.wait_state("failed", TIMEOUT)
        await fence(watching)
    assert failed["run_output"]["exit_code"] == 128 + signal.SIGKILL
    assert failed["stable_at"] is not None  # it was stable: it asks nobody to take over
    assert history(watching.messages, "p0") == p0_before, "p0 was not touched"
    assert transitions(history(watching.messages, "n"))[-1] == "failed"
    assert [(e["from"], e["to"]) for e in rollback_events(watching)] == [("n", "p")]
    for eid in ("p0", "p", "n"):
        assert not [pid for pid in pids(history(watching.messages, eid)) if pid_alive(pid)], eid


async def test_a_newer_generation_of_p_from_the_orchestrator_wins_over_rollback(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    fail_now = tmp_path / "n-fails-now"
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        await p.wait_state("running", TIMEOUT)
        await publish(watching, update("n", "p", exits_3_when(fail_now), window_s=60))
        await p.wait_state("stopped", TIMEOUT)
        await n.wait_state("validating", TIMEOUT)
        # After the hand-over and before N fails, the orchestrator says P is to stay stopped.
        await publish(watching, desired("p", 2, "stopped"))
        await p.wait(lambda d: d["observed_generation"] == 2, TIMEOUT, what="p generation 2")
        fail_now.touch()
        await n.wait_state("failed", TIMEOUT)
        await fence(watching)
    documents = history(watching.messages, "p")
    assert transitions(documents)[-2:] == ["stopping", "stopped"]
    assert documents[-1]["observed_generation"] == 2
    assert "rollback" not in documents[-1]["details"]
    assert not [pid for pid in pids(documents) if pid_alive(pid)]
    assert "rolled_back_to" not in history(watching.messages, "n")[-1]["details"]
    assert rollback_events(watching) == []


async def rollback_across_a_crash(
    broker: Broker, probe: Probe, state_dir: Path, workdir: Path, kill_before_failed: bool
) -> None:
    """kill -9 the agent around N's failure; the restarted agent rolls P back exactly once."""
    fail_now = workdir / "n-fails-now"
    agent = AgentProcess(broker, workdir / "agent", state_dir=state_dir)
    p, n = StatusLog(probe, NODE, "p"), StatusLog(probe, NODE, "n")
    try:
        agent.start()
        await publish(probe, service("p"))
        first = pid_of(await p.wait_state("running", TIMEOUT))
        if kill_before_failed:
            await publish(probe, update("n", "p", exits_3_when(fail_now), window_s=60))
            await n.wait_state("validating", TIMEOUT)
            agent.kill()
            fail_now.touch()  # N fails while the agent is down; its supervisor records the exit
            exit_file = state_dir / "executions" / "n" / "exit-1"
            await wait_until(exit_file.exists, TIMEOUT, what="n's exit recorded")
            assert "failed" not in n.states()
        else:
            await publish(probe, failing_update("n", "p"))
            await n.wait_state("failed", TIMEOUT)
            agent.kill()
        agent.start()
        again = await p.wait(rolled_back, TIMEOUT, what="p running again after the rollback")
        failed = await n.wait(lambda d: "rolled_back_to" in d["details"], TIMEOUT, what="n rolled back")
        await fence(probe)
    finally:
        agent.kill()
    p_history = history(probe.messages, "p")  # revisions 1..n, one document each
    n_history = history(probe.messages, "n")
    assert transitions(p_history) == [
        "pending", "starting", "validating", "running", "stopping", "stopped", "starting", "validating", "running",
    ]  # fmt: skip
    assert transitions(n_history)[-1] == "failed"
    assert pids(p_history) == [first, pid_of(again)]
    assert pid_alive(pid_of(again))
    assert failed["run_output"]["exit_code"] == 3
    assert failed["details"]["rolled_back_to"] == "p"
    (event,) = rollback_events(probe)
    assert (event["execution_id"], event["from"], event["to"]) == ("p", "n", "p")
    assert p_history[-1]["details"]["rollback"] == {"from": "n", "at": event["at"]}


async def test_rollback_survives_a_kill_9_right_after_n_failed(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    await rollback_across_a_crash(broker, watching, state_dir, tmp_path, kill_before_failed=False)


async def test_rollback_happens_when_n_failed_while_the_agent_was_killed(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    await rollback_across_a_crash(broker, watching, state_dir, tmp_path, kill_before_failed=True)


# --- Chains ------------------------------------------------------------------------------------------------


async def test_chain_of_updates_leaves_only_the_last_running(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    logs = {e: StatusLog(watching, NODE, e) for e in ("p1", "p2", "p3")}
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p1"))
        await logs["p1"].wait_state("running", TIMEOUT)
        await publish(watching, update("p2", "p1"))
        await logs["p2"].wait_state("running", TIMEOUT)
        await publish(watching, update("p3", "p2"))
        await logs["p3"].wait_state("running", TIMEOUT)
    final = {e: history(watching.messages, e) for e in logs}
    assert [final[e][-1]["observed_state"]["state_type"] for e in logs] == ["stopped", "stopped", "running"]
    assert [final[e][-1]["next_execution_id"] for e in logs] == ["p2", "p3", None]
    assert [final[e][-1]["previous_execution_id"] for e in logs] == [None, "p1", "p2"]
    assert all(d[-1]["stable_at"] is not None for d in final.values())
    alive = {e: [pid for pid in pids(final[e]) if pid_alive(pid)] for e in logs}
    assert alive["p1"] == []
    assert alive["p2"] == []
    assert len(alive["p3"]) == 1
    assert index_of(watching, "p1", "stopped") < index_of(watching, "p2", "starting")
    assert index_of(watching, "p2", "stopped") < index_of(watching, "p3", "starting")
    assert rollback_events(watching) == []


async def test_rollback_in_the_middle_of_a_chain_leaves_the_first_stopped(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    p1, p2, p3 = (StatusLog(watching, NODE, e) for e in ("p1", "p2", "p3"))
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p1"))
        await p1.wait_state("running", TIMEOUT)
        await publish(watching, update("p2", "p1"))
        first = await p2.wait_state("running", TIMEOUT)
        p1_before = history(watching.messages, "p1")
        await publish(watching, failing_update("p3", "p2"))
        again = await p2.wait(rolled_back, TIMEOUT, what="p2 running again")
        failed = await p3.wait(lambda d: "rolled_back_to" in d["details"], TIMEOUT, what="p3 rolled back")
        await fence(watching)
    assert history(watching.messages, "p1") == p1_before, "p1 was not touched"
    assert p1_before[-1]["observed_state"]["state_type"] == "stopped"
    assert p1_before[-1]["next_execution_id"] == "p2"
    assert not [pid for pid in pids(p1_before) if pid_alive(pid)]
    assert pid_of(again) != pid_of(first)
    assert pid_alive(pid_of(again))
    assert again["details"]["rollback"]["from"] == "p3"
    assert again["next_execution_id"] == "p3"
    assert failed["details"]["rolled_back_to"] == "p2"
    assert [(e["from"], e["to"]) for e in rollback_events(watching)] == [("p3", "p2")]


async def test_update_of_an_execution_in_the_middle_of_its_rollback(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    """P1 -> P2 fails -> P1 rolling back (held in validating) -> P3 with previous P1: P1 stops, P3 runs."""
    healthy = tmp_path / "p1-healthy"
    healthy.touch()
    p1, _p2, p3 = (StatusLog(watching, NODE, e) for e in ("p1", "p2", "p3"))
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p1", probe=healthy_while(healthy)))
        first = await p1.wait_state("running", TIMEOUT)
        healthy.unlink()  # from now on P1 cannot pass a validation window again
        await publish(watching, failing_update("p2", "p1"))
        rolling = await p1.wait(
            lambda d: "rollback" in d["details"] and d["observed_state"]["state_type"] == "validating",
            TIMEOUT,
            what="p1 validating its rollback",
        )
        await publish(watching, update("p3", "p1"))
        stopped = await p1.wait(
            lambda d: d["next_execution_id"] == "p3" and d["observed_state"]["state_type"] == "stopped",
            TIMEOUT,
            what="p1 stopped for p3",
        )
        running = await p3.wait_state("running", TIMEOUT)
        await fence(watching)
    assert transitions(history(watching.messages, "p1")) == [
        "pending", "starting", "validating", "running",  # first run
        "stopping", "stopped",  # for P2
        "starting", "validating",  # the rollback, never stable again
        "stopping", "stopped",  # for P3
    ]  # fmt: skip
    assert stopped["observed_state"]["message"] == "stopped for the update to p3"
    assert stopped["details"]["rollback"]["from"] == "p2"
    assert not pid_alive(pid_of(first))
    assert not pid_alive(pid_of(rolling))
    assert index_of(watching, "p1", "stopped", rolling_index(watching)) < index_of(watching, "p3", "starting")
    assert pid_alive(pid_of(running))
    assert running["previous_execution_id"] == "p1"
    assert history(watching.messages, "p2")[-1]["details"]["rolled_back_to"] == "p1"
    assert [(e["from"], e["to"]) for e in rollback_events(watching)] == [("p2", "p1")]


def rolling_index(probe: Probe) -> int:
    """Arrival index of P1's first status that carries its rollback."""
    topic = status_topic(NODE, "p1")
    return next(m.index for m in probe.messages if m.topic == topic and "rollback" in m.json()["details"])


# --- Deletion -------------------------------------------------------------------------------------------


async def test_a_previous_deleted_after_the_hand_over_is_not_rolled_back_to(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    """The polite order: P stopped for N, then its desired topic cleared; N fails later: P is unknown now."""
    fail_now = tmp_path / "n-fails-now"
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        await publish(watching, service("p"))
        await p.wait_state("running", TIMEOUT)
        await publish(watching, update("n", "p", exits_3_when(fail_now), window_s=60))
        await p.wait_state("stopped", TIMEOUT)
        await n.wait_state("validating", TIMEOUT)
        await watching.publish(desired_topic(NODE, "p"), b"", retain=True)
        cleared = await watching.wait_for(
            lambda m: m.topic == p.topic and m.payload == b"", TIMEOUT, what="p cleared"
        )
        fail_now.touch()
        await n.wait_state("failed", TIMEOUT)
        await fence(watching)
    assert not [m for m in watching.messages[cleared.index + 1 :] if m.topic == p.topic]
    assert "rolled_back_to" not in n.documents()[-1]["details"]
    assert rollback_events(watching) == []


async def test_deleting_p_while_it_stops_for_n_releases_n(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    stubborn = ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]  # stops only at the SIGKILL
    p, n = StatusLog(watching, NODE, "p"), StatusLog(watching, NODE, "n")
    async with running_agent(config_for(broker, state_dir)):
        p_spec = desired("p", command=stubborn, window_s=WINDOW_S, stop={"signal": "SIGTERM", "grace_s": 1.0})
        await publish(watching, p_spec)
        await p.wait_state("running", TIMEOUT)
        await publish(watching, update("n", "p"))
        await p.wait_state("stopping", TIMEOUT)
        await watching.publish(desired_topic(NODE, "p"), b"", retain=True)  # deleted while it stops
        await watching.wait_for(lambda m: m.topic == p.topic and m.payload == b"", TIMEOUT, what="p cleared")
        await fence(watching)
    # P is gone: N must not wait for it any longer.
    assert "starting" in n.states(), n.states()

"""Chaos: kill -9 the agent, restart and kill the broker, under a stream of state transitions.

Afterwards every execution's published revisions are 1..n with no gap, no two different documents
share a revision, long-running workloads keep their pid, and every exit is reported with its real code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, desired, desired_topic, node_topic, pid_of, status_topic
from tests.support.broker import Broker
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

NODE = "node-1"
CYCLERS = 15  # workloads that exit and are restarted over and over, each with its own exit code
SLEEPERS = 5  # workloads that run throughout and must never be restarted
THICK = 200  # transitions the kill -9 test must see, so that its kills land among them
MAX_KILLS = 40


def transitions_so_far(probe: Probe) -> int:
    """State changes seen so far, counted as check_history counts them (without its checks)."""
    count = 0
    for revisions in statuses_by_execution(probe.messages).values():
        states = [_json(next(iter(revisions[n])))["observed_state"]["state_type"] for n in sorted(revisions)]
        count += state_changes(states)
    return count


def state_changes(states: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(states) if a != b)


def cycler_code(index: int) -> int:
    return 10 + index


def workloads() -> dict[str, dict[str, Any]]:
    documents = {}
    for i in range(CYCLERS):
        command = ["sh", "-c", f"sleep 0.{3 + i % 6}; exit {cycler_code(i)}"]
        documents[f"cycle-{i}"] = desired(
            f"cycle-{i}",
            command=command,
            window_s=0.1,
            policy="always",
            restart={"policy": "always", "max_restarts": 100000, "backoff_s": 0.05, "backoff_max_s": 0.2},
        )
    for i in range(SLEEPERS):
        documents[f"sleep-{i}"] = desired(f"sleep-{i}", command=["sleep", "600"], window_s=0.1)
    return documents


def statuses_by_execution(messages: list[Message]) -> dict[str, dict[int, set[bytes]]]:
    """execution id -> revision -> every distinct payload seen for that revision."""
    seen: dict[str, dict[int, set[bytes]]] = defaultdict(lambda: defaultdict(set))
    for m in messages:
        if m.topic.endswith("/status") and "/executions/" in m.topic and m.payload:
            document = m.json()
            seen[document["execution_id"]][document["revision"]].add(m.payload)
    return seen


def check_history(messages: list[Message], final: dict[str, dict[str, Any]]) -> int:
    """The invariants; returns the number of state transitions observed."""
    seen = statuses_by_execution(messages)
    transitions = 0
    for execution_id, revisions in seen.items():
        numbers = sorted(revisions)
        assert numbers == list(range(1, numbers[-1] + 1)), f"{execution_id}: gap in revisions {numbers}"
        for number, payloads in revisions.items():
            assert len(payloads) == 1, f"{execution_id}: revision {number} published with different documents"
        documents = [_json(next(iter(revisions[n]))) for n in numbers]
        states = [d["observed_state"]["state_type"] for d in documents]
        assert "lost" not in states, f"{execution_id}: reported lost: {states}"
        transitions += state_changes(states)
        if execution_id.startswith("cycle-"):
            code = cycler_code(int(execution_id.removeprefix("cycle-")))
            exits = [
                d["run_output"]["exit_code"] for d in documents if d["run_output"]["exit_code"] is not None
            ]
            assert set(exits) <= {code, 128 + signal.SIGTERM}, f"{execution_id}: exit codes {set(exits)}"
            pids = {d["compute_reference"] for d in documents if d["compute_reference"]}
            # Every attempt is a restart the agent chose: none was started twice because of a crash.
            assert len(pids) <= final[execution_id]["restart_count"] + 1
        else:
            pids = {d["compute_reference"] for d in documents if d["compute_reference"]}
            assert len(pids) == 1, f"{execution_id}: restarted although it never exited: {pids}"
            assert final[execution_id]["restart_count"] == 0
    return transitions


def _json(payload: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(payload)
    return document


async def start_all(probe: Probe) -> None:
    for execution_id, document in workloads().items():
        await probe.publish(desired_topic(NODE, execution_id), document, retain=True)


async def stop_all(probe: Probe) -> None:
    for execution_id, document in workloads().items():
        stopped = {**document, "generation": 2, "desired_state": {"state_type": "stopped"}}
        await probe.publish(desired_topic(NODE, execution_id), stopped, retain=True)


def latest(probe: Probe) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for m in probe.messages:
        if m.topic.endswith("/status") and "/executions/" in m.topic and m.payload:
            document = m.json()
            known = result.get(document["execution_id"])
            if known is None or document["revision"] >= known["revision"]:
                result[document["execution_id"]] = document
    return result


async def test_kill_9_at_random_points_loses_and_repeats_nothing(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)  # its workloads stopped at teardown
    try:
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            agent.start()
            await start_all(probe)
            sleepers_first = {}
            for i in range(SLEEPERS):
                document = await probe.wait_for(
                    lambda m, i=i: (
                        m.topic == status_topic(NODE, f"sleep-{i}")
                        and m.json()["observed_state"]["state_type"] == "running"
                    ),
                    what=f"sleep-{i} running",
                )
                sleepers_first[f"sleep-{i}"] = pid_of(document.json())
            kills = 0
            # At least 12 kills, and on until the stream is dense enough to mean something: each start
            # of the agent takes a while (identity check, imports), and a slow machine fits fewer
            # transitions between kills. Bounded: a stream that never thickens fails below.
            while kills < 12 or (transitions_so_far(probe) < THICK and kills < MAX_KILLS):
                await asyncio.sleep(rng.uniform(0.1, 1.2))  # chaos timing, not synchronisation
                agent.kill()
                kills += 1
                # Let workloads exit while the agent is away, sometimes.
                await asyncio.sleep(rng.choice([0.0, 0.0, 0.5, 1.0]))
                mark = probe.mark()
                agent.start()
                # The random kill lands in the agent's working life, not in its start-up (about a second
                # of imports and checks before it acts), which would leave nothing to kill it among.
                await probe.wait_for(
                    lambda m: (
                        m.topic == node_topic(NODE) and bool(m.payload) and m.json()["state"] == "online"
                    ),
                    after=mark,
                    timeout=30,
                    what="the agent online again",
                )
            await stop_all(probe)
            await wait_until(
                lambda: (
                    all(
                        d["observed_state"]["state_type"] == "stopped" and d["observed_generation"] == 2
                        for d in latest(probe).values()
                    )
                    and len(latest(probe)) == CYCLERS + SLEEPERS
                ),
                timeout=60,
                what="every execution stopped",
            )
            final = latest(probe)
            transitions = check_history(probe.messages, final)
            for execution_id, pid in sleepers_first.items():
                assert pid_of(final[execution_id]) == pid
        print(f"{transitions} transitions across {CYCLERS + SLEEPERS} executions, {kills} kill -9s")
        assert transitions >= THICK, f"only {transitions} transitions: the stream was too thin"
    finally:
        agent.kill()


def stored(state_dir: Path) -> tuple[dict[str, int], int]:
    """The agent's own record: revision per execution, and how many messages still wait to be published."""
    with sqlite3.connect(state_dir / "agent.db") as db:
        revisions = dict(db.execute("SELECT execution_id, revision FROM revisions").fetchall())
        depth = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return revisions, depth


async def test_broker_restarts_and_kills_lose_nothing(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(99)
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)  # its workloads stopped at teardown
    seen: list[Message] = []
    try:
        agent.start()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            await start_all(probe)
            await probe.wait_for(
                lambda m: m.topic.endswith("/status") and "cycle-0/" in m.topic, what="first status"
            )
        for round_ in range(6):
            async with Probe(broker.host, broker.port) as probe:
                await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
                await asyncio.sleep(rng.uniform(0.3, 1.5))  # chaos timing, not synchronisation
                seen += probe.messages
            await (broker.akill() if round_ % 2 else broker.astop())
            await asyncio.sleep(rng.uniform(0.2, 1.5))  # the agent keeps reconciling meanwhile
            await broker.astart()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            await stop_all(probe)
            await wait_until(
                lambda: (
                    len(latest(probe)) == CYCLERS + SLEEPERS
                    and all(
                        d["observed_state"]["state_type"] == "stopped" and d["observed_generation"] == 2
                        for d in latest(probe).values()
                    )
                ),
                timeout=60,
                what="every execution stopped",
            )
            await wait_until(lambda: stored(agent.state_dir)[1] == 0, timeout=20, what="outbox drained")
            seen += probe.messages
        revisions, _ = stored(agent.state_dir)
        # Fresh eyes: what the broker retains is exactly what the agent recorded last.
        async with Probe(broker.host, broker.port) as fresh:
            await fresh.subscribe(f"reconcile/v1/nodes/{NODE}/executions/+/status")
            await wait_until(
                lambda: len(latest(fresh)) == CYCLERS + SLEEPERS, timeout=10, what="retained statuses"
            )
            assert {e: d["revision"] for e, d in latest(fresh).items()} == revisions
        for execution_id, by_revision in statuses_by_execution(seen).items():
            for number, payloads in by_revision.items():
                assert len(payloads) == 1, f"{execution_id}: revision {number} has different documents"
            states = [_json(next(iter(p)))["observed_state"]["state_type"] for p in by_revision.values()]
            assert "lost" not in states
    finally:
        agent.kill()


async def test_updates_and_rollbacks_under_kill_9_happen_exactly_once(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    """Hand-overs and rollbacks go through the durable mailbox: random kills neither lose nor repeat one."""
    pairs = 8
    rng = random.Random(77)
    agent = AgentProcess(broker, tmp_path / "agent", state_dir=state_dir)  # its workloads stopped at teardown
    try:
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            agent.start()
            for i in range(pairs):
                await probe.publish(
                    desired_topic(NODE, f"p{i}"), desired(f"p{i}", command=["sleep", "600"]), retain=True
                )
            for i in range(pairs):
                await probe.wait_for(
                    lambda m, i=i: (
                        m.topic == status_topic(NODE, f"p{i}")
                        and m.json()["observed_state"]["state_type"] == "running"
                    ),
                    what=f"p{i} running",
                )
            for i in range(pairs):
                update = desired(f"n{i}", command=["sh", "-c", f"sleep 0.{2 + i}; exit 3"], window_s=30)
                update["previous_execution_id"] = f"p{i}"
                await probe.publish(desired_topic(NODE, f"n{i}"), update, retain=True)
            for _ in range(10):
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # chaos timing, not synchronisation
                agent.kill()
                await asyncio.sleep(rng.choice([0.0, 0.3]))
                agent.start()

            def settled() -> bool:
                now = latest(probe)
                return all(
                    now.get(f"p{i}", {}).get("observed_state", {}).get("state_type") == "running"
                    and (now[f"p{i}"]["details"].get("rollback") or {}).get("from") == f"n{i}"
                    and now.get(f"n{i}", {}).get("details", {}).get("rolled_back_to") == f"p{i}"
                    for i in range(pairs)
                )

            await wait_until(settled, timeout=60, what="every update failed and rolled back")
            seen = statuses_by_execution(probe.messages)
            for execution_id, revisions in seen.items():
                numbers = sorted(revisions)
                assert numbers == list(range(1, numbers[-1] + 1)), (
                    f"{execution_id}: gap in revisions {numbers}"
                )
                assert all(len(p) == 1 for p in revisions.values()), f"{execution_id}: a revision differs"
            rollbacks = {
                m.payload
                for m in probe.messages_on(f"reconcile/v1/nodes/{NODE}/events")
                if m.json()["type"] == "rollback"
            }
            by_target = Counter(_json(p)["execution_id"] for p in rollbacks)
            assert by_target == {f"p{i}": 1 for i in range(pairs)}, by_target
            for i in range(pairs):
                history = [_json(next(iter(seen[f"p{i}"][n]))) for n in sorted(seen[f"p{i}"])]
                pids = {d["compute_reference"] for d in history if d["compute_reference"]}
                assert len(pids) == 2, f"p{i}: the original process and one rollback, not {pids}"
    finally:
        agent.kill()

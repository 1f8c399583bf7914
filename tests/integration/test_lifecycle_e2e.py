"""The agent end to end: desired documents in over a real broker, real workloads, statuses out."""

from __future__ import annotations

from pathlib import Path

from agent.streams import read_range
from tests.support.agent import (
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
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"


async def test_batch_job_runs_to_completion_with_every_state_its_own_revision(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(
            desired_topic(NODE, "job-1"),
            desired("job-1", command=["sh", "-c", "echo out; echo err >&2; sleep 0.5"]),
            retain=True,
        )
        log = StatusLog(watching, NODE, "job-1")
        done = await log.wait_state("completed")
    assert log.states() == ["pending", "starting", "validating", "running", "completed"]
    assert log.revisions() == [1, 2, 3, 4, 5]
    assert done["run_output"]["exit_code"] == 0
    assert done["run_output"]["stdout"] == "out\n"
    assert done["run_output"]["stderr"] == "err\n"
    assert done["stable_at"] is not None
    assert done["observed_generation"] == 1
    assert done["updated_at"].endswith("Z")
    # The full logs stay on the node.
    assert read_range(state_dir / "executions" / "job-1", "stdout", 0, 1024) == (0, b"out\n")


async def test_non_zero_exit_fails_and_keeps_the_exit_code(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(
            desired_topic(NODE, "bad"),
            desired("bad", command=["sh", "-c", "exit 3"], window_s=5),
            retain=True,
        )
        failed = await StatusLog(watching, NODE, "bad").wait_state("failed")
    assert failed["run_output"]["exit_code"] == 3
    assert failed["stable_at"] is None


async def test_command_that_cannot_start_fails_with_an_error(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(
            desired_topic(NODE, "nope"), desired("nope", command=["/no/such/binary"]), retain=True
        )
        failed = await StatusLog(watching, NODE, "nope").wait_state("failed")
    assert "/no/such/binary" in failed["run_output"]["error"]
    assert failed["run_output"]["exit_code"] is None


async def test_stop_signals_the_process_group_and_reports_stopped(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        # A shell with a child: both must go, so the signal has to reach the whole group.
        command = ["sh", "-c", "sleep 300 & wait"]
        await watching.publish(desired_topic(NODE, "svc"), desired("svc", command=command), retain=True)
        log = StatusLog(watching, NODE, "svc")
        running = await log.wait_state("running")
        pid = pid_of(running)
        await watching.publish(desired_topic(NODE, "svc"), desired("svc", 2, "stopped", command), retain=True)
        stopped = await log.wait_state("stopped")
    assert log.states()[-2:] == ["stopping", "stopped"]
    assert stopped["observed_generation"] == 2
    assert stopped["run_output"]["exit_code"] == 128 + 15
    assert not pid_alive(pid)


async def test_stop_escalates_to_sigkill_after_the_grace_period(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    stubborn = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]
    spec = {"stop": {"signal": "SIGTERM", "grace_s": 0.3}}
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "s"), desired("s", command=stubborn, **spec), retain=True)
        log = StatusLog(watching, NODE, "s")
        await log.wait_state("running")
        await watching.publish(
            desired_topic(NODE, "s"), desired("s", 2, "stopped", stubborn, **spec), retain=True
        )
        stopped = await log.wait_state("stopped")
    assert stopped["run_output"]["exit_code"] == 128 + 9


async def test_running_again_after_stopped_starts_a_new_attempt(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        topic = desired_topic(NODE, "again")
        await watching.publish(topic, desired("again", command=sleeper()), retain=True)
        log = StatusLog(watching, NODE, "again")
        first = pid_of(await log.wait_state("running"))
        await watching.publish(topic, desired("again", 2, "stopped", sleeper()), retain=True)
        await log.wait_state("stopped")
        mark = watching.mark()
        await watching.publish(topic, desired("again", 3, "running", sleeper()), retain=True)
        second = pid_of(await log.wait_state("running", after=mark))
    assert first != second
    assert log.revisions() == list(range(1, len(log.revisions()) + 1))


async def test_pending_is_stored_but_not_started(broker: Broker, watching: Probe, state_dir: Path) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "p"), desired("p", 1, "pending", sleeper()), retain=True)
        pending = await StatusLog(watching, NODE, "p").wait_state("pending")
    assert pending["compute_reference"] is None
    assert not list((state_dir / "executions").glob("p/pid-*"))


async def test_duplicate_and_stale_generations_change_nothing(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        topic = desired_topic(NODE, "gen")
        await watching.publish(topic, desired("gen", 5, command=sleeper()), retain=True)
        log = StatusLog(watching, NODE, "gen")
        await log.wait_state("running")
        before = log.revisions()
        await watching.publish(topic, desired("gen", 5, "stopped", sleeper()))
        await watching.publish(topic, desired("gen", 4, "stopped", sleeper()))
        # A fence: a newer generation is processed after the two above, so their effect (none) is visible.
        await watching.publish(desired_topic(NODE, "fence"), desired("fence", 1, "pending", sleeper()))
        await StatusLog(watching, NODE, "fence").wait_state("pending")
    assert log.revisions() == before
    assert log.states()[-1] == "running"


async def test_deletion_stops_the_workload_and_clears_the_status(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        topic = desired_topic(NODE, "gone")
        await watching.publish(topic, desired("gone", command=sleeper()), retain=True)
        log = StatusLog(watching, NODE, "gone")
        pid = pid_of(await log.wait_state("running"))
        await watching.publish(topic, b"", retain=True)
        await watching.wait_for(lambda m: m.topic == log.topic and m.payload == b"", what="status cleared")
        assert not pid_alive(pid)
        assert log.states()[-2:] == ["stopping", "stopped"]
        last = log.revisions()[-1]
        # Re-created with the same id: revisions continue above the old high-water mark.
        await watching.publish(topic, desired("gone", 1, "pending", sleeper()), retain=True)
        again = await log.wait(lambda d: d["revision"] > last, what="re-created status")
    assert again["revision"] == last + 1
    assert (
        not (state_dir / "executions" / "gone").exists() or again["observed_state"]["state_type"] == "pending"
    )


async def test_node_status_counts_executions_and_goes_offline_on_shutdown(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "a"), desired("a", command=sleeper()), retain=True)
        await watching.publish(desired_topic(NODE, "b"), desired("b", 1, "pending", sleeper()), retain=True)
        online = await watching.wait_for(
            lambda m: m.topic == node_topic(NODE) and m.json()["executions"] == {"pending": 1, "running": 1},
            what="node status with counts",
        )
        started = await watching.wait_for(
            lambda m: m.topic == events_topic(NODE) and m.json()["type"] == "agent_started",
            what="agent_started",
        )
    offline = await watching.wait_for(
        lambda m: m.topic == node_topic(NODE) and m.json()["state"] == "offline", what="offline"
    )
    assert online.retain or online.json()["state"] == "online"
    assert started.json()["execution_id"] is None
    assert offline.json()["node_id"] == NODE
    # The workload outlives the agent.
    a = StatusLog(watching, NODE, "a").documents()[-1]
    assert pid_alive(pid_of(a))


async def test_desired_for_another_node_is_never_seen(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic("node-2", "x"), desired("x", command=sleeper()), retain=True)
        await watching.publish(desired_topic(NODE, "fence"), desired("fence", 1, "pending", sleeper()))
        await StatusLog(watching, NODE, "fence").wait_state("pending")
    assert not watching.messages_on("reconcile/v1/nodes/+/executions/x/status")


async def test_revisions_continue_across_agent_restarts(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir)
    log = StatusLog(watching, NODE, "r")
    async with running_agent(config):
        await watching.publish(desired_topic(NODE, "r"), desired("r", command=sleeper()), retain=True)
        pid = pid_of(await log.wait_state("running"))
    async with running_agent(config):
        # Re-adopted: same process, and the retained desired document redelivered changes nothing.
        await watching.publish(desired_topic(NODE, "r"), desired("r", 2, "stopped", sleeper()), retain=True)
        await log.wait_state("stopped")
    assert log.revisions() == list(range(1, len(log.revisions()) + 1))
    assert log.states() == ["pending", "starting", "validating", "running", "stopping", "stopped"]
    assert not pid_alive(pid)


async def test_statuses_made_while_the_broker_is_down_are_published_in_order_when_it_returns(
    broker: Broker, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)) as agent:
        async with Probe(broker.host, broker.port) as probe:
            await probe.publish(
                desired_topic(NODE, "o"), desired("o", command=["sh", "-c", "sleep 1; exit 7"]), retain=True
            )
            await wait_until(lambda: "o" in agent.runtime.executions, timeout=10, what="accepted")
        await broker.astop()
        # The workload ends while the broker is away: the agent keeps reconciling and queues the statuses.
        await wait_until(
            lambda: agent.runtime.executions["o"].state_type == "failed",
            timeout=15,
            what="failed while offline",
        )
        assert agent.store.depth() > 0
        await broker.astart()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/executions/o/status")
            final = await StatusLog(probe, NODE, "o").wait_state("failed")
        await wait_until(lambda: agent.store.depth() == 0, timeout=10, what="outbox drained")
    assert final["run_output"]["exit_code"] == 7
    assert final["revision"] == 5


async def test_a_restart_resumes_exactly_where_the_agent_was(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    """Nothing completed runs again, nothing stopped starts again, restart counts and backoff continue."""
    config = config_for(broker, state_dir)
    crash = {"restart": {"policy": "on-failure", "max_restarts": 5, "backoff_s": 3.0, "backoff_max_s": 3.0}}
    done, halted, looping = (StatusLog(watching, NODE, e) for e in ("done", "halted", "looping"))
    async with running_agent(config):
        await watching.publish(desired_topic(NODE, "done"), desired("done", command=["true"]), retain=True)
        await watching.publish(
            desired_topic(NODE, "halted"), desired("halted", command=sleeper()), retain=True
        )
        await watching.publish(
            desired_topic(NODE, "looping"),
            # A window far longer than it lives: it fails in validation, however slowly the exit is reported.
            desired("looping", command=["sh", "-c", "exit 9"], window_s=30, **crash),
            retain=True,
        )
        await done.wait_state("completed")
        await halted.wait_state("running")
        await watching.publish(
            desired_topic(NODE, "halted"), desired("halted", 2, "stopped", sleeper()), retain=True
        )
        await halted.wait_state("stopped")
        waiting = await looping.wait(lambda d: d["restart_count"] == 1, what="looping waits to restart")
    before = {log.topic: log.revisions()[-1] for log in (done, halted, looping)}
    mark = watching.mark()
    async with running_agent(config) as agent:
        # The retained desired documents come back on the new session; a fence orders what follows.
        await watching.publish(desired_topic(NODE, "fence"), desired("fence", 1, "pending", sleeper()))
        await StatusLog(watching, NODE, "fence").wait_state("pending")
        assert agent.runtime.executions["done"].attempt == 1
        assert agent.runtime.executions["halted"].attempt == 1
        restarted = await looping.wait(lambda d: d["restart_count"] == 2, what="the second restart")
    assert done.revisions()[-1] == before[done.topic]
    assert halted.revisions()[-1] == before[halted.topic]
    assert not [m for m in watching.messages[mark:] if m.topic in (done.topic, halted.topic)]
    # The backoff went on from where it was: the next attempt came no earlier than announced.
    next_at = waiting["observed_state"]["details"]["next_restart_at"]
    second_start = next(
        d
        for d in looping.documents()
        if d["restart_count"] == 1 and d["observed_state"]["state_type"] == "validating"
    )
    assert second_start["updated_at"] >= next_at
    assert restarted["revision"] > before[looping.topic]

"""Restart policy, backoff, degraded/failed after stability and timeout_s, end to end (issue #5).

Real broker, real workloads, the agent in process. Nothing waits a fixed time: every wait is on a published
status or event. Backoff delays are checked two ways: exactly, as ``next_restart_at - updated_at`` of the
status that scheduled the restart (both come from the same decision), and as measured on the wire, as the
time between that status and the next spawn, which may only be longer (a loaded machine is slow, never
early), so only a lower bound is asserted there.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    events_topic,
    message,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
    state,
    ts,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
WAIT = 20.0  # generous: these tests must pass on a loaded two-core machine


def restart_events(probe: Probe, execution_id: str) -> list[dict[str, Any]]:
    events = [m.json() for m in probe.messages_on(events_topic(NODE))]
    return [e for e in events if e["type"] == "restart" and e["execution_id"] == execution_id]


def restart_spec(policy: str, max_restarts: int, backoff_s: float, backoff_max_s: float) -> dict[str, Any]:
    return {
        "restart": {
            "policy": policy,
            "max_restarts": max_restarts,
            "backoff_s": backoff_s,
            "backoff_max_s": backoff_max_s,
        }
    }


def scheduled(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The statuses that scheduled a restart (they carry ``details.next_restart_at``)."""
    return [d for d in documents if "next_restart_at" in d["observed_state"]["details"]]


def planned_delay(document: dict[str, Any]) -> float:
    return ts(document["observed_state"]["details"]["next_restart_at"]) - ts(document["updated_at"])


def spawn_after(documents: list[dict[str, Any]], waiting: dict[str, Any]) -> dict[str, Any]:
    """The status of the restart that ``waiting`` scheduled: the next one whose message is 'restarting'."""
    later = [d for d in documents if d["revision"] > waiting["revision"] and message(d) == "restarting"]
    assert later, f"no restart after revision {waiting['revision']}"
    return later[0]


# --- 2. restart policy and backoff --------------------------------------------------------------------------


async def test_crash_loop_backs_off_exponentially_then_fails_with_restarts_exhausted(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    spec = restart_spec("on-failure", max_restarts=4, backoff_s=0.1, backoff_max_s=0.4)
    # A long window: every run dies during validation, so it is never stable and waits in `starting`.
    document = desired("loop", command=["sh", "-c", "exit 3"], window_s=5.0, **spec)
    log = StatusLog(watching, NODE, "loop")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "loop"), document, retain=True)
        failed = await log.wait_state("failed", timeout=WAIT)
        # Events are published after the status of the same decision; the last one may trail the fail.
        await wait_until(lambda: len(restart_events(watching, "loop")) >= 4, WAIT, what="4 restart events")
    documents = log.documents()

    assert log.states() == ["pending", "starting", "validating"] + [
        "starting",
        "starting",
        "validating",
    ] * 4 + ["failed"]
    assert "restarts exhausted" in message(failed)
    assert failed["restart_count"] == 4
    assert failed["run_output"]["exit_code"] == 3
    assert failed["stable_at"] is None
    assert log.revisions() == list(range(1, len(documents) + 1))

    waits = scheduled(documents)
    assert [state(d) for d in waits] == ["starting"] * 4  # never stable: it waits in starting
    assert [d["restart_count"] for d in waits] == [1, 2, 3, 4]
    # The planned delays double from backoff_s and stop at backoff_max_s.
    assert [round(planned_delay(d), 3) for d in waits] == [0.1, 0.2, 0.4, 0.4]
    # On the wire: each restart comes no earlier than planned ...
    spawns = [spawn_after(documents, d) for d in waits]
    for waiting, spawn in zip(waits, spawns, strict=True):
        assert ts(spawn["updated_at"]) - ts(waiting["updated_at"]) >= 0.8 * planned_delay(waiting)
        assert "next_restart_at" not in spawn["observed_state"]["details"]
    # ... and the intervals between consecutive spawns grow with the backoff.
    starts = [d for d in documents if state(d) == "starting" and message(d) in ("spawning", "restarting")]
    assert len(starts) == 5
    intervals = [ts(b["updated_at"]) - ts(a["updated_at"]) for a, b in pairwise(starts)]
    for interval, expected in zip(intervals, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert interval >= 0.8 * expected, intervals

    events = restart_events(watching, "loop")
    assert [e["restart_count"] for e in events] == [1, 2, 3, 4]
    assert [e["exit_code"] for e in events] == [3, 3, 3, 3]
    assert [e["next_restart_at"] for e in events] == [
        d["observed_state"]["details"]["next_restart_at"] for d in waits
    ]


async def test_policy_decides_which_exits_are_restarted(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    cases = {
        # execution: (command, policy, max_restarts)
        "never-fails": (["sh", "-c", "exit 3"], "never", 3),
        "on-failure-succeeds": (["sh", "-c", "exit 0"], "on-failure", 3),
        "always-succeeds": (["sh", "-c", "exit 0"], "always", 2),
    }
    logs = {eid: StatusLog(watching, NODE, eid) for eid in cases}
    async with running_agent(config_for(broker, state_dir)):
        for eid, (command, policy, max_restarts) in cases.items():
            spec = restart_spec(policy, max_restarts=max_restarts, backoff_s=0.1, backoff_max_s=0.2)
            document = desired(eid, command=command, window_s=5.0, **spec)
            await watching.publish(desired_topic(NODE, eid), document, retain=True)
        never = await logs["never-fails"].wait_state("failed", timeout=WAIT)
        on_failure = await logs["on-failure-succeeds"].wait_state("completed", timeout=WAIT)
        always = await logs["always-succeeds"].wait_state("completed", timeout=WAIT)
        await wait_until(lambda: len(restart_events(watching, "always-succeeds")) >= 2, WAIT, what="restarts")

    # never: a failure is final, not restarted.
    assert logs["never-fails"].states() == ["pending", "starting", "validating", "failed"]
    assert never["restart_count"] == 0
    assert never["run_output"]["exit_code"] == 3
    assert "restarts exhausted" not in message(never)
    assert restart_events(watching, "never-fails") == []
    # on-failure: exit 0 completes, no restart.
    assert logs["on-failure-succeeds"].states() == ["pending", "starting", "validating", "completed"]
    assert on_failure["restart_count"] == 0
    assert restart_events(watching, "on-failure-succeeds") == []
    # always: exit 0 is restarted too, within max_restarts; the last exit 0 then completes.
    assert always["restart_count"] == 2
    assert always["run_output"]["exit_code"] == 0
    events = restart_events(watching, "always-succeeds")
    assert [(e["exit_code"], e["restart_count"]) for e in events] == [(0, 1), (0, 2)]
    assert all(e["next_restart_at"] for e in events)
    assert logs["always-succeeds"].states().count("validating") == 3


async def test_a_run_that_passes_its_window_resets_the_backoff_and_the_budget(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    # Each run stays up past its window (so it is stable), then fails: the backoff never grows, and the
    # budget of max_restarts=2 never runs out, as the restarts are counted since the last stable run.
    spec = restart_spec("on-failure", max_restarts=2, backoff_s=0.1, backoff_max_s=1.6)
    command = ["sh", "-c", "sleep 1; exit 1"]
    log = StatusLog(watching, NODE, "flaky")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(
            desired_topic(NODE, "flaky"), desired("flaky", command=command, window_s=0.3, **spec), retain=True
        )
        await log.wait(
            lambda d: d["restart_count"] == 3 and state(d) == "running", WAIT, "3rd restart stable"
        )
        await watching.publish(
            desired_topic(NODE, "flaky"), desired("flaky", 2, "stopped", command, window_s=0.3, **spec)
        )
        await log.wait_state("stopped", timeout=WAIT)
    documents = log.documents()
    waits = scheduled(documents)
    assert len(waits) == 3
    assert [round(planned_delay(d), 3) for d in waits] == [0.1, 0.1, 0.1]  # not 0.1, 0.2, 0.4
    assert [state(d) for d in waits] == ["degraded"] * 3  # each crash was of a stable execution
    assert "failed" not in log.states()
    stable = {d["stable_at"] for d in documents if d["stable_at"] is not None}
    assert len(stable) == 1


async def test_a_crash_during_validation_restarts_the_window_but_not_the_deadline(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    # Every run dies after 0.3 s, before its 1 s window: with a restarted deadline this would loop until
    # the (large) budget ran out; with a window that ran on across restarts it would become stable.
    spec = restart_spec("on-failure", max_restarts=50, backoff_s=0.1, backoff_max_s=0.2)
    document = desired("dies", command=["sh", "-c", "sleep 0.3; exit 1"], window_s=1.0, **spec)
    document["spec"]["validation"]["deadline_s"] = 1.5
    log = StatusLog(watching, NODE, "dies")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "dies"), document, retain=True)
        failed = await log.wait_state("failed", timeout=WAIT)
    documents = log.documents()
    first_up = next(d for d in documents if state(d) == "validating")
    elapsed = ts(failed["updated_at"]) - ts(first_up["updated_at"])

    assert "validation failed" in message(failed)
    assert failed["stable_at"] is None
    assert all(d["stable_at"] is None for d in documents)
    assert "running" not in log.states()
    assert 1 <= failed["restart_count"] < 50
    assert log.states().count("validating") >= 2  # it was restarted and validated again
    assert elapsed >= 1.5 * 0.95  # the deadline counts from the first start ...
    assert elapsed < 1.5 + 5.0  # ... and is not restarted by the crashes (generous bound: load)


# --- 3. degraded and failed after stability -----------------------------------------------------------------


async def test_a_stable_execution_that_crashes_is_degraded_then_running_then_failed_when_exhausted(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    crash = tmp_path / "crash"  # the running workload exits 1 once this appears (and removes it)
    loop = tmp_path / "loop"  # with this present, every run exits 1 at once
    script = (
        f'if [ -f "{loop}" ]; then exit 1; fi; '
        f'while [ ! -f "{crash}" ]; do sleep 0.05; done; rm -f "{crash}"; exit 1'
    )
    spec = restart_spec("on-failure", max_restarts=2, backoff_s=0.2, backoff_max_s=5.0)
    document = desired("svc", command=["sh", "-c", script], window_s=1.0, **spec)
    log = StatusLog(watching, NODE, "svc")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "svc"), document, retain=True)
        running = await log.wait_state("running", timeout=WAIT)
        stable_at = running["stable_at"]
        assert stable_at is not None
        first_pid = pid_of(running)

        # One crash: degraded while it waits, degraded while it validates again, then running.
        mark = watching.mark()
        crash.touch()
        again = await log.wait_state("running", timeout=WAIT, after=mark)
        recovered = [d for d in log.documents() if d["revision"] > running["revision"]]
        assert [state(d) for d in recovered] == ["degraded", "degraded", "degraded", "running"]
        waiting = recovered[0]
        assert waiting["restart_count"] == 1
        assert waiting["run_output"]["exit_code"] == 1
        assert round(planned_delay(waiting), 3) == 0.2
        assert [message(d) for d in recovered[1:]] == ["restarting", "validating", "stable"]
        assert pid_of(again) != first_pid
        assert not pid_alive(first_pid)
        assert again["restart_count"] == 1

        # Now every run dies at once: restarted under the (reset) budget, then failed.
        loop.touch()
        crash.touch()
        failed = await log.wait_state("failed", timeout=WAIT)
        await wait_until(lambda: len(restart_events(watching, "svc")) >= 3, WAIT, what="restart events")
    documents = log.documents()
    assert "restarts exhausted" in message(failed)
    assert failed["restart_count"] == 3  # 1 + a fresh budget of 2
    assert failed["run_output"]["exit_code"] == 1
    after_recovery = [d for d in documents if d["revision"] > again["revision"]]
    assert set(map(state, after_recovery[:-1])) == {"degraded"}  # it never fell back to `starting`
    assert [round(planned_delay(d), 3) for d in scheduled(after_recovery)] == [0.2, 0.4]
    # stable_at is set once and never changes, not even when it fails.
    assert {d["stable_at"] for d in documents if d["stable_at"] is not None} == {stable_at}
    assert all(d["stable_at"] == stable_at for d in documents if d["revision"] >= running["revision"])
    events = restart_events(watching, "svc")
    assert [e["restart_count"] for e in events] == [1, 2, 3]
    assert all(e["next_restart_at"] for e in events)


# --- 4. timeout_s -------------------------------------------------------------------------------------------


async def test_timeout_stops_a_long_workload_and_fails_it(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    document = desired("long", command=sleeper(), window_s=0.2, timeout_s=1.0, policy="always")
    log = StatusLog(watching, NODE, "long")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "long"), document, retain=True)
        running = await log.wait_state("running", timeout=WAIT)
        pid = pid_of(running)
        failed = await log.wait_state("failed", timeout=WAIT)
        await wait_until(lambda: not pid_alive(pid), 5, what="workload gone")
    states = log.states()
    assert states[-3:] == ["running", "stopping", "failed"]
    assert "timed out" in message(failed)
    assert "timeout_s" in message(failed)
    stopping = log.documents()[-2]
    assert "timed out" in message(stopping)
    assert failed["run_output"]["exit_code"] == 128 + 15
    assert failed["restart_count"] == 0  # the agent's own stop is not a crash to restart, even with always
    first_up = next(d for d in log.documents() if state(d) == "validating")
    assert ts(stopping["updated_at"]) - ts(first_up["updated_at"]) >= 1.0 * 0.95
    assert failed["stable_at"] == running["stable_at"]
    assert restart_events(watching, "long") == []

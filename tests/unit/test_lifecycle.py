"""The lifecycle core, ``decide(state, event, now) -> (state, actions)``, transition by transition.

Every decision made here goes through :func:`run`, which also checks what must hold for any decision:
revisions grow by exactly one per PublishStatus, the last published document is the new state's, and
every transition published is in the core's table (agent/core/transitions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError

from agent.core.actions import Action, ClearStatus, EmitEvent, Forget, PublishStatus, Signal, Spawn
from agent.core.clock import Now
from agent.core.events import (
    DesiredDeleted,
    DesiredReceived,
    DesiredRejected,
    Event,
    ProcessExited,
    ProcessStarted,
    SpawnFailed,
    SpawnLost,
    Tail,
    TimerFired,
)
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.status import status_document, status_view
from agent.protocol import DesiredDocument, Spec, rfc3339
from tests.support.transitions import assert_legal_transitions

NODE = "node-1"
EID = "web-2"
T0 = 1_800_000_000.0

# Small numbers so the timeline of a scenario is easy to follow.
BASE_SPEC: dict[str, Any] = {
    "command": ["/bin/server"],
    "restart": {"policy": "on-failure", "max_restarts": 3, "backoff_s": 1.0, "backoff_max_s": 8.0},
    "validation": {"window_s": 10.0, "deadline_s": 60.0},
    "stop": {"signal": "SIGTERM", "grace_s": 5.0},
}

State = Execution | Absent


# --- Helpers ----------------------------------------------------------------------------------------------


def make_spec(**overrides: Any) -> Spec:
    """BASE_SPEC with top-level keys replaced; ``policy``, ``max_restarts``, ``window_s``... are shortcuts."""
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE_SPEC.items()}
    for key, value in overrides.items():
        if key in raw["restart"]:
            raw["restart"][key] = value
        elif key in raw["validation"]:
            raw["validation"][key] = value
        elif key in raw["stop"]:
            raw["stop"][key] = value
        else:
            raw[key] = value
    return Spec.model_validate(raw)


def document(
    generation: int,
    state_type: str = "running",
    *,
    spec: Spec | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    job_id: str | None = None,
    previous_execution_id: str | None = None,
    with_spec: bool = True,
) -> DesiredDocument:
    return DesiredDocument.model_validate(
        {
            "execution_id": EID,
            "job_id": job_id,
            "generation": generation,
            "desired_state": {"state_type": state_type, "message": message, "details": details or {}},
            "previous_execution_id": previous_execution_id,
            "spec": (spec or make_spec()).model_dump() if with_spec else None,
        }
    )


def desired(generation: int, state_type: str = "running", **kwargs: Any) -> DesiredReceived:
    doc = document(generation, state_type, **kwargs)
    return DesiredReceived(doc, digest=f"digest-{generation}-{state_type}-{hash(doc.model_dump_json())}")


def rejection(
    generation: int | None, reason: str = "spec.command: bad", digest: str = "bad"
) -> DesiredRejected:
    return DesiredRejected(generation, reason, digest)


def ref(attempt: int) -> ProcessRef:
    return ProcessRef(
        attempt=attempt, pid=1000 + attempt, started=T0, supervisor_pid=900 + attempt, supervisor_started=T0
    )


def started(attempt: int) -> ProcessStarted:
    return ProcessStarted(ref(attempt))


def exited(attempt: int, code: int | None, stdout: str = "", stderr: str = "") -> ProcessExited:
    return ProcessExited(attempt, code, Tail(stdout), Tail(stderr, truncated=bool(stderr)))


def timer(name: str) -> TimerFired:
    return TimerFired(name)


def absent(revision: int = 0) -> Absent:
    return Absent(execution_id=EID, node_id=NODE, revision=revision)


def publishes(actions: list[Action]) -> list[PublishStatus]:
    return [a for a in actions if isinstance(a, PublishStatus)]


def check_decision(before: State, after: State, actions: list[Action]) -> None:
    """What holds for every decision, whatever the event."""
    docs = publishes(actions)
    assert [p.revision for p in docs] == list(range(before.revision + 1, before.revision + 1 + len(docs)))
    assert after.revision == before.revision + len(docs)
    for p in docs:
        assert p.execution_id == EID
        assert p.document["revision"] == p.revision
        assert p.document["execution_id"] == EID
        assert p.document["node_id"] == NODE
    views = [{k: v for k, v in p.document.items() if k not in ("revision", "updated_at")} for p in docs]
    if isinstance(before, Execution) and docs:
        views.insert(0, status_view(before))
    assert all(a != b for a, b in pairwise(views)), "an unchanged status was republished"
    if isinstance(after, Execution):
        assert Execution.model_validate_json(after.model_dump_json()) == after
        if docs:
            assert docs[-1].document == status_document(after)
        assert not (after.process is not None and after.spawn_pending)
    if any(isinstance(a, Spawn) for a in actions):
        assert isinstance(after, Execution)
        assert after.process is None
        assert after.spawn_pending
    assert_legal_transitions(before, actions)


@dataclass
class Run:
    """The result of folding events through decide: every intermediate state and all actions."""

    states: list[State]
    steps: list[list[Action]] = field(default_factory=list)
    now: float = T0

    @property
    def state(self) -> State:
        return self.states[-1]

    @property
    def execution(self) -> Execution:
        assert isinstance(self.state, Execution), self.state
        return self.state

    @property
    def actions(self) -> list[Action]:
        return [a for step in self.steps for a in step]

    @property
    def last(self) -> list[Action]:
        return self.steps[-1] if self.steps else []

    def then(self, *events: Event | tuple[float, Event]) -> Run:
        """Continue with more events; a ``(t, event)`` pair happens at T0 + t, a bare event at the last time."""
        return run(self.state, *events, now=self.now, history=self)


def run(
    state: State, *events: Event | tuple[float, Event], now: float = T0, history: Run | None = None
) -> Run:
    out = Run(states=[state], now=now) if history is None else history
    for item in events:
        if isinstance(item, tuple):
            offset, event = item
            assert T0 + offset >= out.now, "time goes forward"
            out.now = T0 + offset
        else:
            event = item
        before = out.state
        after, actions = decide(before, event, Now(out.now, out.now))
        check_decision(before, after, actions)
        out.states.append(after)
        out.steps.append(actions)
    return out


def types_published(actions: list[Action]) -> list[str]:
    return [p.document["observed_state"]["state_type"] for p in publishes(actions)]


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def signals(actions: list[Action]) -> list[str]:
    return [a.signal for a in actions if isinstance(a, Signal)]


def spawns(actions: list[Action]) -> list[Spawn]:
    return [a for a in actions if isinstance(a, Spawn)]


def events_emitted(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.document for a in actions if isinstance(a, EmitEvent)]


# Named starting points: the events that bring a fresh execution into a state, with their times.
Timeline = list[tuple[float, Event]]


def up_to(point: str, **spec: Any) -> Timeline:
    s = make_spec(**spec)
    steps: dict[str, Timeline] = {
        "pending": [(0, desired(1, "pending", spec=s))],
        "starting": [(0, desired(1, spec=s))],
        "validating": [(0, desired(1, spec=s)), (1, started(1))],
        "running": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window"))],
        # a crash before stability: waiting for the restart timer (restart at 13)
        "restart-wait": [(0, desired(1, spec=s)), (1, started(1)), (12, exited(1, 1))],
        # a crash after stability: waiting in degraded (restart at 21)
        "degraded-wait": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, exited(1, 1))],
        # the restart of a stable execution, spawn under way
        "degraded-spawning": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, exited(1, 1)), (21, timer("restart"))],
        # a stop or a deletion asked while the first spawn is under way
        "stopping-spawning": [(0, desired(1, spec=s)), (0.5, desired(2, "stopped", spec=s))],
        "deleting-spawning": [(0, desired(1, spec=s)), (0.5, DesiredDeleted())],
        "stopping": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, desired(2, "stopped", spec=s))],
        "stopped": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, desired(2, "stopped", spec=s)), (21, exited(1, 143))],
        "completed": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, exited(1, 0))],
        "failed": [(0, desired(1, spec=s)), (1, started(1)), (2, exited(1, 1))],
        "lost": [(0, desired(1, spec=s)), (1, started(1)), (11, timer("window")), (20, exited(1, None))],
        "rejected-only": [(0, rejection(1))],
    }  # fmt: skip
    return steps[point]


def at(point: str, **spec: Any) -> Run:
    """A fresh execution brought to ``point``; ``failed`` and ``lost`` stay there only with policy never."""
    return run(absent(), *up_to(point, **spec))


# --- The transition table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    start: str  # a key of up_to, or "absent"
    event: tuple[float, Event]
    published: list[str]  # observed state types published by this one decision, in order
    actions: list[str]  # action kinds of this decision, in order
    spec: dict[str, Any] = field(default_factory=dict)
    final: str | None = None  # the observed state after it (None: Absent)


CASES: dict[str, Case] = {
    # creation
    "absent+running->pending,starting+spawn": Case("absent", (0, desired(1)), ["pending", "starting"], ["PublishStatus", "PublishStatus", "Spawn"], final="starting"),
    "absent+pending->pending": Case("absent", (0, desired(1, "pending")), ["pending"], ["PublishStatus"], final="pending"),
    "absent+stopped->pending,stopped": Case("absent", (0, desired(1, "stopped", with_spec=False)), ["pending", "stopped"], ["PublishStatus", "PublishStatus"], final="stopped"),
    "absent+rejected->failed": Case("absent", (0, rejection(3)), ["failed"], ["EmitEvent", "PublishStatus"], final="failed"),
    "absent+process-events->nothing": Case("absent", (0, exited(1, 0)), [], [], final=None),
    "absent+deleted->nothing": Case("absent", (0, DesiredDeleted()), [], [], final=None),
    # pending
    "pending+running->pending(new desired),starting+spawn": Case("pending", (5, desired(2)), ["pending", "starting"], ["PublishStatus", "PublishStatus", "Spawn"], final="starting"),
    "pending+stopped->pending(new desired),stopped": Case("pending", (5, desired(2, "stopped")), ["pending", "stopped"], ["PublishStatus", "PublishStatus"], final="stopped"),
    "pending+pending-new-message->pending": Case("pending", (5, desired(2, "pending", message="hold")), ["pending"], ["PublishStatus"], final="pending"),
    "pending+deleted->forget": Case("pending", (5, DesiredDeleted()), [], ["ClearStatus", "Forget"], final=None),
    # starting
    "starting+started->validating": Case("starting", (1, started(1)), ["validating"], ["PublishStatus"], final="validating"),
    "starting+started-window0->validating,running": Case("starting", (1, started(1)), ["validating", "running"], ["PublishStatus", "PublishStatus"], spec={"window_s": 0}, final="running"),
    "starting+spawn-failed->starting(restart)": Case("starting", (1, SpawnFailed(1, "ENOENT")), ["starting"], ["EmitEvent", "PublishStatus"], final="starting"),
    "starting+spawn-failed-never->failed": Case("starting", (1, SpawnFailed(1, "ENOENT")), ["failed"], ["PublishStatus"], spec={"policy": "never"}, final="failed"),
    "starting+stopped->stopping": Case("starting", (1, desired(2, "stopped")), ["stopping"], ["PublishStatus"], final="stopping"),
    "starting+deleted->stopping": Case("starting", (1, DesiredDeleted()), ["stopping"], ["PublishStatus"], final="stopping"),
    "starting+stale-started->nothing": Case("starting", (1, started(2)), [], [], final="starting"),
    "starting+stale-spawn-failed->nothing": Case("starting", (1, SpawnFailed(7, "x")), [], [], final="starting"),
    "starting+spawn-lost->starting+spawn2": Case("starting", (1, SpawnLost(1)), ["starting"], ["PublishStatus", "Spawn"], final="starting"),
    "starting+stale-spawn-lost->nothing": Case("starting", (1, SpawnLost(2)), [], [], final="starting"),
    "validating+spawn-lost->nothing": Case("validating", (2, SpawnLost(1)), [], [], final="validating"),
    "degraded-spawning+spawn-lost->degraded+spawn3": Case("degraded-spawning", (22, SpawnLost(2)), ["degraded"], ["PublishStatus", "Spawn"], final="degraded"),
    "stopping-spawning+spawn-lost->stopped": Case("stopping-spawning", (1, SpawnLost(1)), ["stopped"], ["PublishStatus"], final="stopped"),
    "deleting-spawning+spawn-lost->forget": Case("deleting-spawning", (1, SpawnLost(1)), ["stopped"], ["PublishStatus", "ClearStatus", "Forget"], final=None),
    "starting+exit-without-process->nothing": Case("starting", (1, exited(1, 0)), [], [], final="starting"),
    # validating
    "validating+window->running": Case("validating", (11, timer("window")), ["running"], ["PublishStatus"], final="running"),
    "validating+exit1-on-failure->starting(restart)": Case("validating", (5, exited(1, 1)), ["starting"], ["EmitEvent", "PublishStatus"], final="starting"),
    "validating+exit0-on-failure->completed": Case("validating", (5, exited(1, 0)), ["completed"], ["PublishStatus"], final="completed"),
    "validating+exit0-never->completed": Case("validating", (5, exited(1, 0)), ["completed"], ["PublishStatus"], spec={"policy": "never"}, final="completed"),
    "validating+exit3-never->failed": Case("validating", (5, exited(1, 3)), ["failed"], ["PublishStatus"], spec={"policy": "never"}, final="failed"),
    "validating+exit0-always->starting(restart)": Case("validating", (5, exited(1, 0)), ["starting"], ["EmitEvent", "PublishStatus"], spec={"policy": "always"}, final="starting"),
    "validating+exit1-exhausted->failed": Case("validating", (5, exited(1, 1)), ["failed"], ["PublishStatus"], spec={"max_restarts": 0}, final="failed"),
    "validating+exit-none-never->lost": Case("validating", (5, exited(1, None)), ["lost"], ["EmitEvent", "PublishStatus"], spec={"policy": "never"}, final="lost"),
    "validating+exit-none-on-failure->lost,starting(restart)": Case("validating", (5, exited(1, None)), ["lost", "starting"], ["EmitEvent", "PublishStatus", "EmitEvent", "PublishStatus"], final="starting"),
    "validating+exit-none-exhausted->lost": Case("validating", (5, exited(1, None)), ["lost"], ["EmitEvent", "PublishStatus"], spec={"max_restarts": 0}, final="lost"),
    "validating+deadline->stopping+signal": Case("validating", (6, timer("deadline")), ["stopping"], ["Signal", "PublishStatus"], spec={"deadline_s": 5}, final="stopping"),
    "validating+stopped->stopping+signal": Case("validating", (5, desired(2, "stopped")), ["stopping"], ["Signal", "PublishStatus"], final="stopping"),
    "validating+stale-exit->nothing": Case("validating", (5, exited(2, 1)), [], [], final="validating"),
    "validating+unknown-timer->nothing": Case("validating", (5, timer("bogus")), [], [], final="validating"),
    "validating+restart-timer-not-held->nothing": Case("validating", (5, timer("restart")), [], [], final="validating"),
    # running
    "running+exit1->degraded(restart)": Case("running", (20, exited(1, 1)), ["degraded"], ["EmitEvent", "PublishStatus"], final="degraded"),
    "running+exit0->completed": Case("running", (20, exited(1, 0)), ["completed"], ["PublishStatus"], final="completed"),
    "running+exit0-always->degraded(restart)": Case("running", (20, exited(1, 0)), ["degraded"], ["EmitEvent", "PublishStatus"], spec={"policy": "always"}, final="degraded"),
    "running+exit-none-never->lost": Case("running", (20, exited(1, None)), ["lost"], ["EmitEvent", "PublishStatus"], spec={"policy": "never"}, final="lost"),
    "running+exit-none-always->lost,degraded(restart)": Case("running", (20, exited(1, None)), ["lost", "degraded"], ["EmitEvent", "PublishStatus", "EmitEvent", "PublishStatus"], spec={"policy": "always"}, final="degraded"),
    "running+stopped->stopping+signal": Case("running", (20, desired(2, "stopped")), ["stopping"], ["Signal", "PublishStatus"], final="stopping"),
    "running+deleted->stopping+signal": Case("running", (20, DesiredDeleted()), ["stopping"], ["Signal", "PublishStatus"], final="stopping"),
    "running+deadline-cleared->nothing": Case("running", (70, timer("deadline")), [], [], final="running"),
    "running+pending->rejected": Case("running", (20, desired(2, "pending")), ["running"], ["EmitEvent", "PublishStatus"], final="running"),
    "running+same-generation->ignored": Case("running", (20, desired(1, "stopped")), [], [], final="running"),
    "running+rejected->running(details)": Case("running", (20, rejection(2)), ["running"], ["EmitEvent", "PublishStatus"], final="running"),
    "running+stale-rejected->ignored": Case("running", (20, rejection(1)), [], [], final="running"),
    "running+new-message->running": Case("running", (20, desired(2, message="still on")), ["running"], ["PublishStatus"], final="running"),
    # waiting for a restart
    "restart-wait+restart->starting+spawn2": Case("restart-wait", (13, timer("restart")), ["starting"], ["PublishStatus", "Spawn"], final="starting"),
    "restart-wait+stopped->stopped": Case("restart-wait", (12.5, desired(2, "stopped")), ["stopped"], ["PublishStatus"], final="stopped"),
    "restart-wait+deleted->forget": Case("restart-wait", (12.5, DesiredDeleted()), [], ["ClearStatus", "Forget"], final=None),
    "restart-wait+deadline->failed": Case("restart-wait", (12.5, timer("deadline")), ["failed"], ["PublishStatus"], spec={"deadline_s": 11.5}, final="failed"),
    "degraded-wait+restart->degraded+spawn2": Case("degraded-wait", (21, timer("restart")), ["degraded"], ["PublishStatus", "Spawn"], final="degraded"),
    "degraded-wait+stopped->stopped": Case("degraded-wait", (20.5, desired(2, "stopped")), ["stopped"], ["PublishStatus"], final="stopped"),
    # stopping
    "stopping+grace->sigkill": Case("stopping", (25, timer("grace")), [], ["Signal"], final="stopping"),
    "stopping+exit->stopped": Case("stopping", (22, exited(1, 143)), ["stopped"], ["PublishStatus"], final="stopped"),
    "stopping+exit-none->stopped": Case("stopping", (22, exited(1, None)), ["stopped"], ["PublishStatus"], final="stopped"),
    "stopping+running-again->(on exit)": Case("stopping", (21, desired(3)), ["stopping"], ["PublishStatus"], final="stopping"),
    "stopping+deleted->stopping": Case("stopping", (21, DesiredDeleted()), [], [], final="stopping"),
    # stopped
    "stopped+running->starting+spawn2(stable)": Case("stopped", (30, desired(3)), ["starting"], ["PublishStatus", "Spawn"], final="starting"),
    "stopped+stopped->stopped(new desired)": Case("stopped", (30, desired(3, "stopped", message="still")), ["stopped"], ["PublishStatus"], final="stopped"),
    "stopped+deleted->forget": Case("stopped", (30, DesiredDeleted()), [], ["ClearStatus", "Forget"], final=None),
    "stopped+grace-cleared->nothing": Case("stopped", (30, timer("grace")), [], [], final="stopped"),
    # terminal results
    "completed+running->completed(no restart)": Case("completed", (30, desired(2, message="again")), ["completed"], ["PublishStatus"], final="completed"),
    "completed+stopped->stopped": Case("completed", (30, desired(2, "stopped")), ["stopped"], ["PublishStatus"], final="stopped"),
    "completed+deleted->forget": Case("completed", (30, DesiredDeleted()), [], ["ClearStatus", "Forget"], final=None),
    "failed+running->failed(no restart)": Case("failed", (30, desired(2, message="again")), ["failed"], ["PublishStatus"], spec={"policy": "never"}, final="failed"),
    "failed+stopped->stopped": Case("failed", (30, desired(2, "stopped")), ["stopped"], ["PublishStatus"], spec={"policy": "never"}, final="stopped"),
    "lost+running->lost(no restart)": Case("lost", (30, desired(2, message="again")), ["lost"], ["PublishStatus"], spec={"policy": "never"}, final="lost"),
    "lost+stopped->stopped": Case("lost", (30, desired(2, "stopped")), ["stopped"], ["PublishStatus"], spec={"policy": "never"}, final="stopped"),
    # an execution that exists only as a rejection
    "rejected-only+running->pending,starting": Case("rejected-only", (5, desired(1)), ["pending", "starting"], ["PublishStatus", "PublishStatus", "Spawn"], final="starting"),
    "rejected-only+other-rejection->failed": Case("rejected-only", (5, rejection(2, digest="other")), ["failed"], ["EmitEvent", "PublishStatus"], final="failed"),
    "rejected-only+same-payload->ignored": Case("rejected-only", (5, rejection(1)), [], [], final="failed"),
    "rejected-only+deleted->forget": Case("rejected-only", (5, DesiredDeleted()), [], ["ClearStatus", "Forget"], final=None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_transition(name: str) -> None:
    case = CASES[name]
    before = run(absent()) if case.start == "absent" else at(case.start, **case.spec)
    offset, event = case.event
    if case.spec and isinstance(event, DesiredReceived) and event.document.spec is not None:
        # the document carries the spec of the execution under test, or it would be a spec change
        event = DesiredReceived(
            event.document.model_copy(update={"spec": make_spec(**case.spec)}), event.digest + "-spec"
        )
    after = before.then((offset, event))
    assert types_published(after.last) == case.published
    assert kinds(after.last) == case.actions
    if case.final is None:
        assert isinstance(after.state, Absent)
        assert after.state.revision == before.state.revision
    else:
        assert after.execution.state_type == case.final
    if name.endswith(("nothing", "ignored")):
        assert after.state == before.state, "an event that changes nothing leaves the state as it was"


def test_transition_starting_points_are_what_they_say() -> None:
    for point, expected in [
        ("pending", "pending"),
        ("starting", "starting"),
        ("validating", "validating"),
        ("running", "running"),
        ("restart-wait", "starting"),
        ("degraded-wait", "degraded"),
        ("stopping", "stopping"),
        ("stopped", "stopped"),
        ("completed", "completed"),
        ("rejected-only", "failed"),
        ("degraded-spawning", "degraded"),
        ("stopping-spawning", "stopping"),
        ("deleting-spawning", "stopping"),
    ]:
        assert at(point).execution.state_type == expected, point
    assert at("failed", policy="never").execution.state_type == "failed"
    assert at("lost", policy="never").execution.state_type == "lost"


# --- Starting and validating -------------------------------------------------------------------------------


def test_creation_publishes_pending_with_desired_then_starting_and_spawns() -> None:
    spec = make_spec()
    r = run(absent(), desired(4, spec=spec, message="go", job_id="web"))
    first, second = (p.document for p in publishes(r.last))
    assert (first["revision"], second["revision"]) == (1, 2)
    assert first["observed_state"]["state_type"] == "pending"
    assert first["observed_generation"] == 4
    assert first["desired_state"] == {"state_type": "running", "message": "go", "details": {}}
    assert first["job_id"] == "web"
    assert first["created_at"] == rfc3339(T0)
    assert first["stable_at"] is None
    assert second["observed_state"]["state_type"] == "starting"
    assert spawns(r.last) == [Spawn(EID, 1, spec)]
    assert r.execution.spawn_pending


def test_started_sets_window_and_deadline_timers() -> None:
    r = at("validating", window_s=10, deadline_s=60)
    e = r.execution
    assert e.deadlines == {"window": T0 + 1 + 10, "deadline": T0 + 1 + 60}
    assert e.process == ref(1)
    assert e.compute_reference == "pid:1001"
    assert not e.spawn_pending
    assert publishes(r.last)[0].document["compute_reference"] == "pid:1001"


def test_window_makes_it_stable() -> None:
    r = at("running")
    e = r.execution
    assert e.stable_at == T0 + 11
    assert e.observed.message == "stable"
    assert e.deadlines == {}  # the deadline no longer applies
    assert publishes(r.last)[0].document["stable_at"] == rfc3339(T0 + 11)


def test_zero_window_is_stable_at_once() -> None:
    r = at("validating", window_s=0)
    assert types_published(r.last) == ["validating", "running"]
    assert r.execution.stable_at == T0 + 1
    assert "window" not in r.execution.deadlines
    assert "deadline" not in r.execution.deadlines


def test_deadline_before_stability_stops_then_fails() -> None:
    r = at("validating", deadline_s=5).then((6, timer("deadline")))
    assert signals(r.last) == ["SIGTERM"]
    assert r.execution.deadlines["grace"] == T0 + 6 + 5
    assert "deadline" not in r.execution.deadlines
    r = r.then((7, exited(1, 143)))
    e = r.execution
    assert e.state_type == "failed"
    assert "validation failed" in e.observed.message
    assert e.stable_at is None
    assert e.run_output.exit_code == 143
    assert e.deadlines == {}


def test_deadline_escalates_to_sigkill_after_grace() -> None:
    r = at("validating", deadline_s=5).then((6, timer("deadline")), (11, timer("grace")))
    assert signals(r.last) == ["SIGKILL"]
    assert publishes(r.last) == []
    assert r.then((12, exited(1, -9))).execution.state_type == "failed"


def test_exit_after_the_deadline_passed_fails_validation_without_restart() -> None:
    # The deadline timer has not fired yet when the exit is handled: the deadline still counts.
    r = at("validating", deadline_s=5).then((7, exited(1, 1)))
    e = r.execution
    assert e.state_type == "failed"
    assert e.observed.message.startswith("validation failed")
    assert e.restart_count == 0


# --- Restarts ------------------------------------------------------------------------------------------------


def test_crash_during_validation_restarts_with_next_restart_at() -> None:
    r = at("restart-wait")
    e = r.execution
    assert e.state_type == "starting"
    assert e.restart_count == 1
    assert e.recent_restarts == 1
    assert e.deadlines == {"restart": T0 + 13, "deadline": T0 + 61}  # the deadline keeps running
    next_at = rfc3339(T0 + 13)
    assert e.observed.details == {"next_restart_at": next_at}
    assert e.run_output.exit_code == 1
    (event,) = events_emitted(r.last)
    assert event["type"] == "restart"
    assert event["execution_id"] == EID
    assert event["node_id"] == NODE
    assert event["next_restart_at"] == next_at
    assert event["restart_count"] == 1
    assert event["exit_code"] == 1
    assert event["at"] == rfc3339(T0 + 12)


def test_restart_timer_spawns_the_next_attempt_and_window_restarts() -> None:
    r = at("restart-wait").then((13, timer("restart")))
    (spawn,) = spawns(r.last)
    assert spawn.attempt == 2
    assert r.execution.observed.details == {}  # next_restart_at is gone once it spawns
    r = r.then((14, started(2)))
    e = r.execution
    assert e.state_type == "validating"
    assert e.deadlines == {"window": T0 + 24, "deadline": T0 + 61}  # new window, same deadline
    assert e.run_output.exit_code is None  # a new attempt starts with fresh output
    r = r.then((24, timer("window")))
    assert r.execution.state_type == "running"
    assert r.execution.recent_restarts == 0
    assert r.execution.restart_count == 1


def test_crash_after_stability_waits_degraded_and_keeps_stable_at() -> None:
    r = at("degraded-wait")
    assert r.execution.stable_at == T0 + 11
    assert r.execution.observed.details == {"next_restart_at": rfc3339(T0 + 21)}
    r = r.then((21, timer("restart")), (22, started(2)))
    assert types_published(r.steps[-2]) == ["degraded"]
    assert types_published(r.last) == ["degraded"]
    assert r.execution.deadlines == {"window": T0 + 32}  # no deadline for a stable execution
    r = r.then((32, timer("window")))
    assert r.execution.state_type == "running"
    assert r.execution.stable_at == T0 + 11


def test_backoff_doubles_up_to_the_maximum() -> None:
    r = at("running", max_restarts=10, backoff_s=1.0, backoff_max_s=8.0, window_s=100)
    delays = []
    now = 20.0
    for attempt in range(1, 7):
        r = r.then((now, exited(attempt, 1)))
        delays.append(r.execution.deadlines["restart"] - (T0 + now))
        now = r.execution.deadlines["restart"] - T0
        r = r.then((now, timer("restart")), (now, started(attempt + 1)))
        now += 1
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert r.execution.restart_count == 6


def test_recent_restarts_reset_when_the_window_passes() -> None:
    r = at("restart-wait").then((13, timer("restart")), (14, started(2)), (24, timer("window")))
    assert r.execution.recent_restarts == 0
    r = r.then((30, exited(2, 1)))
    assert r.execution.deadlines["restart"] == T0 + 31  # backoff starts again at backoff_s
    assert r.execution.restart_count == 2


def test_restarts_exhausted_fail() -> None:
    r = at("validating", max_restarts=2, deadline_s=1000)
    now = 2.0
    for attempt in (1, 2):
        r = r.then((now, exited(attempt, 1)))
        now = r.execution.deadlines["restart"] - T0
        r = r.then((now, timer("restart")), (now, started(attempt + 1)))
    r = r.then((now + 1, exited(3, 1)))
    e = r.execution
    assert e.state_type == "failed"
    assert e.observed.message.endswith("restarts exhausted")
    assert e.restart_count == 2
    assert e.deadlines == {}


def test_spawn_failure_records_the_error_and_restarts() -> None:
    r = at("starting").then((1, SpawnFailed(1, "No such file: /bin/server")))
    e = r.execution
    assert e.run_output.error == "No such file: /bin/server"
    assert e.run_output.exit_code is None
    assert e.state_type == "starting"
    assert "could not start" in e.observed.message
    assert e.deadlines == {"restart": T0 + 2}
    assert not e.spawn_pending
    r = r.then((2, timer("restart")))
    assert [s.attempt for s in spawns(r.last)] == [2]


def test_spawn_failure_with_policy_never_fails() -> None:
    e = at("starting", policy="never").then((1, SpawnFailed(1, "EACCES"))).execution
    assert e.state_type == "failed"
    assert e.run_output.error == "EACCES"


def test_exit_output_is_kept() -> None:
    e = at("validating", policy="never").then((3, exited(1, 2, stdout="out", stderr="boom"))).execution
    assert e.run_output.stdout == "out"
    assert e.run_output.stderr == "boom"
    assert e.run_output.stderr_truncated
    assert e.run_output.exit_code == 2
    assert e.state_type == "failed"
    assert "exit code 2" in e.observed.message


def test_lost_emits_an_event() -> None:
    r = at("lost", policy="never")
    (event,) = events_emitted(r.last)
    assert event["type"] == "lost"
    assert event["execution_id"] == EID
    assert r.execution.run_output.exit_code is None
    assert r.execution.stable_at == T0 + 11
    assert r.execution.deadlines == {}


def test_lost_is_restarted_under_the_restart_policy() -> None:
    r = at("lost")  # on-failure: lost is published, then the restart is scheduled
    assert [e["type"] for e in events_emitted(r.last)] == ["lost", "restart"]
    assert events_emitted(r.last)[1]["exit_code"] is None
    assert types_published(r.last) == ["lost", "degraded"]
    assert r.execution.restart_count == 1
    r = r.then((21, timer("restart")))
    assert [s.attempt for s in spawns(r.last)] == [2]


def test_spawn_lost_spawns_again_without_counting_a_restart() -> None:
    r = at("starting").then((1, SpawnLost(1)))
    assert [s.attempt for s in spawns(r.last)] == [2]
    assert r.execution.restart_count == 0
    assert r.execution.recent_restarts == 0
    assert r.execution.spawn_pending
    assert r.then((2, started(1))).last == []  # the lost attempt never reports back
    assert r.then((2, started(2))).execution.state_type == "validating"


# --- Stopping ------------------------------------------------------------------------------------------------


def test_stop_signal_grace_then_sigkill_then_stopped() -> None:
    r = at("running", signal="SIGINT", grace_s=3).then((20, desired(2, "stopped", with_spec=False)))
    assert signals(r.last) == ["SIGINT"]
    assert r.execution.deadlines == {"grace": T0 + 23}
    r = r.then((23, timer("grace")))
    assert signals(r.last) == ["SIGKILL"]
    assert publishes(r.last) == []
    r = r.then((24, exited(1, -9)))
    e = r.execution
    assert e.state_type == "stopped"
    assert e.run_output.exit_code == -9
    assert e.deadlines == {}
    assert e.process is None


def test_stop_while_spawn_pending_signals_once_started() -> None:
    r = at("starting").then((0.5, desired(2, "stopped")))
    assert r.execution.state_type == "stopping"
    assert signals(r.last) == []
    r = r.then((1, started(1)))
    assert signals(r.last) == ["SIGTERM"]
    assert r.execution.state_type == "stopping"
    assert "grace" in r.execution.deadlines
    assert r.then((2, exited(1, 0))).execution.state_type == "stopped"


def test_stop_while_spawn_pending_and_spawn_fails_is_stopped() -> None:
    r = at("starting").then((0.5, desired(2, "stopped")), (1, SpawnFailed(1, "nope")))
    assert r.execution.state_type == "stopped"
    assert r.execution.deadlines == {}


def test_running_again_after_stopped_starts_a_new_attempt() -> None:
    r = at("stopped").then((30, desired(3)))
    assert [s.attempt for s in spawns(r.last)] == [2]
    r = r.then((31, started(2)), (41, timer("window")))
    assert r.execution.state_type == "running"
    assert r.execution.restart_count == 0  # a requested start is not a restart
    assert r.execution.stable_at == T0 + 11  # stable once, stable forever


def test_running_again_while_stopping_restarts_after_the_exit() -> None:
    r = at("stopping").then((21, desired(3)))
    assert spawns(r.last) == []
    r = r.then((22, exited(1, 143)))
    assert [s.attempt for s in spawns(r.last)] == [2]
    assert r.execution.spawn_pending


def test_never_started_execution_stopped_then_running() -> None:
    r = run(absent(), (0, desired(1, "stopped")), (1, desired(2)))
    assert types_published(r.steps[0]) == ["pending", "stopped"]
    assert types_published(r.last) == ["starting"]
    assert [s.attempt for s in spawns(r.last)] == [1]


# --- Desired documents: stale, rejected, fixed fields --------------------------------------------------------


@pytest.mark.parametrize("generation", [5, 4, 1], ids=["equal", "lower", "first"])
def test_stale_generation_is_ignored_entirely(generation: int) -> None:
    before = at("running")
    before = before.then((12, desired(5, message="five")))
    r = before.then((13, desired(generation, "stopped")), (13, desired(5, "stopped", message="dup")))
    assert r.actions[len(before.actions) :] == []
    assert r.state == before.state


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"spec": make_spec(command=["/bin/other"])}, "spec"),
        ({"spec": make_spec(window_s=11)}, "spec"),
        ({"job_id": "other-job"}, "job_id"),
        ({"previous_execution_id": "web-0"}, "previous_execution_id"),
    ],
    ids=["command", "validation", "job_id", "previous_execution_id"],
)
def test_fixed_fields_cannot_change_after_the_first_start(change: dict[str, Any], named: str) -> None:
    before = at("running")
    r = before.then((20, desired(2, "stopped", **change)))
    e = r.execution
    assert e.state_type == "running"  # the workload is untouched
    assert signals(r.last) == []
    assert spawns(r.last) == []
    assert e.generation == 1
    assert e.spec == before.execution.spec
    (event,) = events_emitted(r.last)
    assert event["type"] == "desired_rejected"
    assert event["generation"] == 2
    assert named in event["reason"]
    assert "previous_execution_id" in event["reason"]  # it says how to update
    assert e.details["rejected"] == {"generation": 2, "reason": event["reason"], "at": rfc3339(T0 + 20)}
    (status,) = publishes(r.last)
    assert status.document["details"]["rejected"]["generation"] == 2


def test_spec_may_change_before_the_first_start() -> None:
    r = at("pending").then((5, desired(2, spec=make_spec(command=["/bin/other"]))))
    assert spawns(r.last)[0].spec.command == ["/bin/other"]


def test_a_stopped_document_without_spec_keeps_the_spec() -> None:
    before = at("running")
    r = before.then((20, desired(2, "stopped", with_spec=False)))
    assert r.execution.state_type == "stopping"
    assert r.execution.spec == before.execution.spec


def test_desired_pending_after_start_is_rejected() -> None:
    r = at("stopped").then((30, desired(3, "pending")))
    e = r.execution
    assert e.state_type == "stopped"
    assert "pending" in e.details["rejected"]["reason"]
    assert [ev["type"] for ev in events_emitted(r.last)] == ["desired_rejected"]


def test_same_bad_payload_twice_is_reported_once() -> None:
    bad = desired(2, job_id="other")
    r = at("running").then((20, bad))
    assert len(publishes(r.last)) == 1
    r = r.then((21, bad))  # a retained redelivery of the same payload
    assert r.last == []
    r = r.then((22, rejection(3, digest="x")))
    assert len(publishes(r.last)) == 1
    assert r.execution.details["rejected"]["generation"] == 3
    r = r.then((23, rejection(3, digest="x")))
    assert r.last == []
    r = r.then((24, bad))  # no longer the last rejected payload: reported again
    assert [e["type"] for e in events_emitted(r.last)] == ["desired_rejected"]


def test_rejection_with_unreadable_generation() -> None:
    r = at("running").then((20, rejection(None, "payload is not JSON")))
    e = r.execution
    assert e.details["rejected"] == {
        "generation": None,
        "reason": "payload is not JSON",
        "at": rfc3339(T0 + 20),
    }
    assert e.state_type == "running"
    assert events_emitted(r.last)[0]["generation"] is None


def test_valid_generation_clears_the_rejection() -> None:
    r = at("running").then((20, rejection(2)), (21, desired(3, message="ok")))
    e = r.execution
    assert "rejected" not in e.details
    assert e.generation == 3
    assert e.rejected_digest is None
    assert publishes(r.last)[0].document["details"] == {}


def test_never_accepted_rejection_is_failed_with_the_reason() -> None:
    r = run(absent(), (0, rejection(2, "spec.command: List should have at least 1 item")))
    e = r.execution
    assert e.state_type == "failed"
    assert "spec.command: List should have at least 1 item" in e.observed.message
    assert e.generation == 0
    assert e.desired is None
    (doc,) = (p.document for p in publishes(r.last))
    assert doc["revision"] == 1
    assert doc["details"]["rejected"]["generation"] == 2
    assert doc["desired_state"] is None
    # A lower but valid generation is still accepted: none was ever accepted.
    r = r.then((1, desired(1)))
    assert types_published(r.last) == ["pending", "starting"]
    assert "rejected" not in r.execution.details


def test_new_generation_does_not_restart_a_terminal_execution() -> None:
    for point, spec in (("completed", {}), ("failed", {"policy": "never"}), ("lost", {"policy": "never"})):
        r = at(point, **spec).then((30, desired(2, spec=make_spec(**spec), message="again")))
        assert spawns(r.last) == [], point
        assert r.execution.state_type == point
        assert r.execution.generation == 2


# --- Deletion ------------------------------------------------------------------------------------------------


def test_deleting_an_inactive_execution_forgets_it_keeping_the_revision() -> None:
    before = at("completed")
    r = before.then((30, DesiredDeleted()))
    assert r.last == [ClearStatus(EID), Forget(EID, EID)]
    assert r.state == absent(before.state.revision)


def test_deleting_an_active_execution_stops_it_first() -> None:
    before = at("running")
    r = before.then((20, DesiredDeleted()))
    assert signals(r.last) == ["SIGTERM"]
    assert r.execution.deleting
    r = r.then((25, timer("grace")))
    assert signals(r.last) == ["SIGKILL"]
    r = r.then((26, exited(1, -9)))
    assert kinds(r.last) == ["PublishStatus", "ClearStatus", "Forget"]
    assert types_published(r.last) == ["stopped"]
    assert isinstance(r.state, Absent)
    assert r.state.revision == publishes(r.last)[0].revision


def test_recreated_execution_continues_the_revision() -> None:
    r = at("completed").then((30, DesiredDeleted()))
    hwm = r.state.revision
    r = r.then((40, desired(1)))
    assert [p.revision for p in publishes(r.last)] == [hwm + 1, hwm + 2]
    assert r.execution.created_at == T0 + 40
    assert r.execution.attempt == 1
    assert r.execution.stable_at is None


def test_recreation_from_a_stored_high_water_mark() -> None:
    r = run(absent(revision=41), (0, desired(1)))
    assert [p.revision for p in publishes(r.last)] == [42, 43]


def test_new_generation_while_deleting_cancels_the_deletion() -> None:
    r = at("running").then((20, DesiredDeleted()), (21, desired(2)))
    assert not r.execution.deleting
    r = r.then((22, exited(1, 143)))
    assert isinstance(r.state, Execution)
    assert [s.attempt for s in spawns(r.last)] == [2]


def test_deletion_while_spawn_pending() -> None:
    r = at("starting").then((0.5, DesiredDeleted()), (1, started(1)))
    assert signals(r.last) == ["SIGTERM"]
    r = r.then((2, exited(1, 0)))
    assert isinstance(r.state, Absent)
    assert kinds(r.last)[-2:] == ["ClearStatus", "Forget"]


# --- Events for other attempts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [started(1), started(3), exited(1, 0), exited(3, None), SpawnFailed(1, "x"), SpawnFailed(3, "x")],
    ids=["started-old", "started-future", "exited-old", "exited-future", "spawnfail-old", "spawnfail-future"],
)
def test_events_for_stale_attempts_change_nothing(event: Event) -> None:
    before = at("restart-wait").then((13, timer("restart")), (14, started(2)))
    assert before.execution.attempt == 2
    r = before.then((15, event))
    assert r.last == []
    assert r.state == before.state


# --- Surprising but as implemented (pinned, so a change is noticed) --------------------------------------------


def test_requested_restart_of_a_stable_execution_goes_through_starting_and_validating() -> None:
    # Only a crash restart of a stable execution waits in `degraded`; a run asked for starts afresh.
    r = at("stopped").then((30, desired(3)), (31, started(2)))
    assert types_published(r.steps[-2]) == ["starting"]
    assert types_published(r.last) == ["validating"]
    assert r.execution.stable_at is not None  # kept forever


def test_pending_with_a_message_publishes_one_pending_revision() -> None:
    r = run(absent(), (0, desired(1, "pending", message="hold")))
    assert types_published(r.last) == ["pending"]


def test_surprise_terminal_execution_revived_by_stopped_then_running() -> None:
    r = at("completed").then((30, desired(2, "stopped")), (31, desired(3)))
    assert r.execution.state_type == "starting"
    assert [s.attempt for s in spawns(r.last)] == [2]


# --- Regressions: bugs found by these tests, fixed ------------------------------------------------------------------------------------------------------


def test_deadline_while_restart_spawn_pending_ends_failed() -> None:
    r = at("restart-wait", deadline_s=20).then((13, timer("restart")), (21, timer("deadline")))
    assert r.execution.state_type == "stopping"  # the spawn under way is stopped when it reports back
    r = r.then((22, started(2)))
    assert "validating" not in types_published(r.last)
    assert signals(r.last) == ["SIGTERM"]
    r = r.then((23, exited(2, 143)))
    assert r.execution.state_type == "failed"
    assert r.execution.stable_at is None


def test_desired_pending_once_a_spawn_was_asked_for_is_rejected() -> None:
    r = at("starting").then((0.5, desired(2, "pending")))
    assert "rejected" in r.execution.details
    assert r.execution.generation == 1
    r = r.then((1, started(1)), (11, timer("window")))
    assert r.execution.state_type == "running"  # the rejected document changed nothing


def test_desired_pending_after_a_spawn_failure_is_rejected_and_the_restart_goes_on() -> None:
    r = at("starting").then((1, SpawnFailed(1, "ENOENT")), (1.5, desired(2, "pending")))
    assert r.execution.state_type == "starting"
    assert "rejected" in r.execution.details
    r = r.then((2, timer("restart")))
    assert [s.attempt for s in spawns(r.last)] == [2]


def test_failed_spawn_is_not_revived_through_pending() -> None:
    r = at("starting", policy="never").then((1, SpawnFailed(1, "ENOENT")))
    assert r.execution.state_type == "failed"
    r = r.then((2, desired(2, "pending", spec=make_spec(policy="never"))))
    assert r.execution.state_type == "failed"
    r = r.then((3, desired(3, spec=make_spec(policy="never"))))
    assert spawns(r.last) == []


def test_all_attempts_of_an_execution_run_the_same_spec() -> None:
    r = at("starting").then(
        (0.5, desired(2, spec=make_spec(command=["/bin/other"]))),
        (1, started(1)),
        (2, exited(1, 1)),
        (3, timer("restart")),
    )
    assert len({s.spec.model_dump_json() for s in spawns(r.actions)}) == 1


@pytest.mark.parametrize("field_name", ["job_id", "previous_execution_id"])
def test_minimal_stopped_document_stops_an_execution_with_ids(field_name: str) -> None:
    spec = make_spec(update_strategy="start_first")  # starts at once, without waiting for "web" to stop
    r = run(absent(), (0, desired(1, spec=spec, **{field_name: "web"})), (1, started(1)))
    r = r.then((2, desired(2, "stopped", with_spec=False)))
    assert signals(r.last) == ["SIGTERM"]


def test_infinite_deadline_is_refused_by_the_spec() -> None:
    with pytest.raises(ValidationError, match="deadline_s"):
        make_spec(deadline_s=float("inf"))


def test_huge_integer_window_is_refused_by_the_spec() -> None:
    with pytest.raises(ValidationError, match="window_s"):
        make_spec(window_s=10**400)


def test_timeout_s_limits_the_run() -> None:
    r = at("validating", timeout_s=5, window_s=1).then((2, timer("window")))
    assert r.execution.state_type == "running"
    assert r.execution.deadlines, "a timer must fire at started + timeout_s"
    name, when = r.execution.next_timer or ("", 0.0)
    assert when <= T0 + 1 + 5
    r = r.then((6, timer(name)))
    assert signals(r.last) == ["SIGTERM"]
    r = r.then((7, exited(1, 143)))
    assert r.execution.state_type == "failed"


def test_window_does_not_fire_while_stopping_after_the_deadline() -> None:
    r = at("validating", deadline_s=5, grace_s=30).then((6, timer("deadline")))
    assert "window" not in r.execution.deadlines
    r = r.then((11, timer("window")))
    assert r.execution.state_type == "stopping"
    assert r.execution.stable_at is None
    r = r.then((36, timer("grace")), (37, exited(1, -9)))
    assert r.execution.state_type == "failed"


def test_deadlines_are_on_the_boot_clock_and_published_times_on_the_wall_clock() -> None:
    """Two clocks 1.7e9 s apart: a mix-up of the two would be off by decades, not by a little."""
    boot = 500.0

    def at(offset: float) -> Now:
        return Now(wall=T0 + offset, boot=boot + offset)

    state, _ = decide(
        absent(), desired(1, spec=make_spec(policy="on-failure", backoff_s=4.0, window_s=10.0)), at(0)
    )
    state, _ = decide(state, started(1), at(1))
    assert isinstance(state, Execution)
    assert state.deadlines["window"] == boot + 1 + 10.0
    state, actions = decide(state, exited(1, 1), at(3))
    assert isinstance(state, Execution)
    assert state.deadlines["restart"] == boot + 3 + 4.0
    assert state.updated_at == T0 + 3
    (published,) = publishes(actions)
    next_at = published.document["observed_state"]["details"]["next_restart_at"]
    assert datetime.fromisoformat(next_at).timestamp() == pytest.approx(T0 + 3 + 4.0)
    # The wall clock stepped back an hour before the restart timer fired: the restart is still counted in
    # real time, and the published time is the wall clock's.
    stepped = Now(wall=T0 + 7 - 3600, boot=boot + 7)
    state, actions = decide(state, timer("restart"), stepped)
    assert spawns(actions)
    assert isinstance(state, Execution)
    assert state.updated_at == T0 + 7 - 3600

"""Random walks through the lifecycle of one execution, checking the invariants after every decision.

The machine plays the orchestrator (desired documents, rejections, deletions), the executor (it knows
which Spawn is under way and which process runs, and reports their start, failure and exit) and the
clock (``now`` only moves forward; timers fire once they are due). The legal transitions of the observed
state are the core's table (agent/core/transitions.py).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.core.actions import Action, ClearStatus, EmitEvent, Forget, PublishStatus, Signal, Spawn
from agent.core.clock import Now
from agent.core.events import (
    DesiredDeleted,
    DesiredMissing,
    DesiredReceived,
    DesiredRejected,
    Event,
    ProbeResult,
    ProcessExited,
    ProcessStarted,
    Published,
    PublishFailed,
    PublishResumed,
    SpawnFailed,
    SpawnLost,
    TimerFired,
)
from agent.core.lifecycle import MISSING, decide
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.status import status_document, status_view
from agent.core.timers import ARMED_IN
from agent.core.transitions import legal
from agent.protocol import (
    DesiredDocument,
    ObservedStateType,
    PublishedResults,
    ResultsMetadata,
    Spec,
    rfc3339,
)

NODE = "node-1"
EID = "web-2"
T0 = 1_800_000_000.0

RESULTS = PublishedResults(
    storage_source="local",
    name=f"{EID}.tar.gz",
    url=f"file:///r/{EID}.tar.gz",
    path=f"/r/{EID}.tar.gz",
    metadata=ResultsMetadata(sha256="0" * 64, size_bytes=1, files=3),
)

SPECS = st.builds(
    lambda command, policy, max_restarts, backoff_s, backoff_max_s, window_s, deadline_s, grace_s, probe, publisher, timeout_s: (
        Spec.model_validate(
            {
                "command": command,
                "timeout_s": timeout_s,
                "probe": probe,
                "publisher": publisher,
                "restart": {
                    "policy": policy,
                    "max_restarts": max_restarts,
                    "backoff_s": backoff_s,
                    "backoff_max_s": backoff_max_s,
                },
                "validation": {"window_s": window_s, "deadline_s": deadline_s},
                "stop": {"signal": "SIGTERM", "grace_s": grace_s},
            }
        )
    ),
    command=st.sampled_from([["/bin/a"], ["/bin/b", "-x"]]),
    policy=st.sampled_from(["never", "on-failure", "always"]),
    max_restarts=st.integers(0, 3),
    backoff_s=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    backoff_max_s=st.sampled_from([1.0, 4.0]),
    window_s=st.sampled_from([0.0, 1.0, 5.0]),
    deadline_s=st.sampled_from([2.0, 8.0, 30.0]),
    grace_s=st.sampled_from([0.0, 2.0]),
    probe=st.sampled_from([None, {"tcp": {"port": 8080}, "period_s": 1.0, "failure_threshold": 2}]),
    publisher=st.sampled_from(
        [
            None,
            None,
            {"type": "local", "deadline_s": 6.0},
            {"type": "local", "when": "always", "deadline_s": 3.0},
        ]
    ),
    timeout_s=st.sampled_from([None, None, None, 4.0, 15.0]),
)


def only_the_mark_changed(before: Execution, after: Execution) -> bool:
    """``after`` is ``before`` but for the desired-missing mark, its revision and its time."""
    unchanged = {"details": before.details, "revision": before.revision, "updated_at": before.updated_at}
    return after.model_copy(update=unchanged) == before


def view_of(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("revision", "updated_at")}


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state: Execution | Absent = Absent(execution_id=EID, node_id=NODE)
        self.now = T0
        self.last_revision = 0  # across deletion and re-creation
        self.max_generation_sent = 0
        self.stable_at: float | None = None  # of the current incarnation, once set
        # The executor's view: the attempt being spawned, and the process it runs.
        self.spawning: int | None = None
        self.process: ProcessRef | None = None
        self.job_id = EID
        self.previous_execution_id: str | None = None

    # --- Driving decide and checking every decision ------------------------------------------------------

    def apply(self, event: Event) -> list[Action]:
        before = self.state
        after, actions = decide(before, event, Now(self.now, self.now))
        self.check(before, after, actions)
        if isinstance(event, DesiredReceived | DesiredRejected) and isinstance(after, Execution):
            # Any retained payload under the topic, good or bad, is the document there again.
            assert after.details.get(MISSING) is None
            if isinstance(before, Execution) and before.details.get(MISSING) is not None:
                emitted = [a.document["type"] for a in actions if isinstance(a, EmitEvent)]
                assert "desired_restored" in emitted
        self.state = after
        self.play_executor(actions)
        return actions

    def check(self, before: Execution | Absent, after: Execution | Absent, actions: list[Action]) -> None:
        docs = [a for a in actions if isinstance(a, PublishStatus)]
        # (a) revisions are consecutive, within a decision and across decisions, and never go back.
        assert before.revision == self.last_revision
        assert [d.revision for d in docs] == list(
            range(self.last_revision + 1, self.last_revision + 1 + len(docs))
        )
        assert after.revision == self.last_revision + len(docs)
        self.last_revision = after.revision
        # (b) each document carries its revision; the last one is the new state's; none repeats the previous.
        for d in docs:
            assert d.document["revision"] == d.revision
            assert d.execution_id == EID
        if docs and isinstance(after, Execution):
            assert docs[-1].document == status_document(after)
        views = [status_view(before) if isinstance(before, Execution) else None]
        views += [view_of(d.document) for d in docs]
        for one, two in pairwise(views):
            assert one != two, "an unchanged status was published again"
        # (d) only legal transitions of the observed state type.
        types: list[ObservedStateType | None] = [before.state_type if isinstance(before, Execution) else None]
        types += [d.document["observed_state"]["state_type"] for d in docs]
        for one, two in pairwise(types):
            assert legal(one, two), f"illegal transition {one} -> {two}"
            if one == "failed" and two == "pending":
                assert isinstance(before, Execution)
                assert before.generation == 0, "only a never-accepted execution leaves failed for pending"
        for one, d in zip(types, docs, strict=False):
            state_type = d.document["observed_state"]["state_type"]
            if state_type == "degraded":
                assert d.document["stable_at"] is not None, "degraded is only for a once-stable execution"
            # A stable execution shows starting/validating only for a run asked for after it was stopped
            # (a crash restart of a stable execution waits in degraded instead).
            if state_type == "starting" and d.document["stable_at"] is not None:
                assert one in ("stopped", "stopping", "starting"), f"stable execution restarted from {one}"
            if state_type == "validating" and d.document["stable_at"] is not None:
                assert one in ("starting", "validating"), f"stable execution validating after {one}"
        # (c) stable_at: first set when entering running (or degraded); never changes afterwards.
        if self.stable_at is not None:
            for d in docs:
                assert d.document["stable_at"] == rfc3339(self.stable_at)
        else:
            first = next((d for d in docs if d.document["stable_at"] is not None), None)
            if first is not None:
                assert first.document["observed_state"]["state_type"] in ("running", "degraded")
        if isinstance(after, Execution):
            if self.stable_at is not None:
                assert after.stable_at == self.stable_at
            self.stable_at = after.stable_at
        else:
            self.stable_at = None
        # (e) a process and a pending spawn never coexist; a Spawn only when no process is held.
        spawns = [a for a in actions if isinstance(a, Spawn)]
        assert len(spawns) <= 1
        if spawns:
            assert self.process is None
            assert self.spawning is None
            assert isinstance(after, Execution)
            assert after.process is None
            assert after.spawn_pending
            previous_attempt = before.attempt if isinstance(before, Execution) else 0
            assert spawns[0].attempt == after.attempt == previous_attempt + 1
        if isinstance(after, Execution):
            assert not (after.process is not None and after.spawn_pending)
            # (f) the state survives the store.
            assert Execution.model_validate_json(after.model_dump_json()) == after
        # Deletion forgets only what runs nothing, and clears the status topic first.
        kinds = [type(a) for a in actions]
        if Forget in kinds:
            assert isinstance(after, Absent)
            assert kinds[-2:] == [ClearStatus, Forget]
            assert self.process is None
        if isinstance(after, Absent):
            assert isinstance(before, Absent) or Forget in kinds
        for a in actions:
            if isinstance(a, Signal):
                assert a.ref == self.process, "signals go to the process the executor runs"

    def play_executor(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Spawn):
                self.spawning = a.attempt

    def held(self) -> Execution | None:
        return self.state if isinstance(self.state, Execution) else None

    # --- The orchestrator ---------------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["desired"] * 6 + ["reject", "delete", "missing"]),
        delta=st.sampled_from([-1, 0, 1, 1, 1, 2]),
        state_type=st.sampled_from(["pending", "running", "running", "running", "running", "stopped"]),
        spec_choice=st.sampled_from(["same", "same", "same", "new", "omit"]),
        ids_change=st.sampled_from([False, False, False, False, False, True]),
        message=st.sampled_from(["", "m"]),
        fresh_spec=SPECS,
        digest=st.sampled_from(["bad-a", "bad-b", "bad-c"]),
    )
    def orchestrate(
        self,
        *,
        kind: str,
        delta: int,
        state_type: str,
        spec_choice: str,
        ids_change: bool,
        message: str,
        fresh_spec: Spec,
        digest: str,
    ) -> None:
        if kind == "desired":
            self.send_desired(
                delta=delta,
                state_type=state_type,
                spec_choice=spec_choice,
                ids_change=ids_change,
                message=message,
                fresh_spec=fresh_spec,
            )
        elif kind == "reject":
            self.send_rejection(None if message else delta, digest)
        elif kind == "missing":
            self.go_missing()
        else:
            self.delete()

    def send_desired(
        self,
        *,
        delta: int,
        state_type: str,
        spec_choice: str,
        ids_change: bool,
        message: str,
        fresh_spec: Spec,
    ) -> None:
        held = self.held()
        generation = max(1, self.max_generation_sent + delta)
        self.max_generation_sent = max(self.max_generation_sent, generation)
        spec: Spec | None = fresh_spec
        if spec_choice == "same" and held is not None and held.spec is not None:
            spec = held.spec
        elif spec_choice == "omit" and state_type == "stopped":
            spec = None
        if ids_change:
            self.job_id = "job-b" if self.job_id == EID else EID
        document = DesiredDocument.model_validate(
            {
                "execution_id": EID,
                "job_id": self.job_id,
                "generation": generation,
                "desired_state": {"state_type": state_type, "message": message, "details": {"n": generation}},
                "previous_execution_id": self.previous_execution_id,
                "spec": spec.model_dump() if spec is not None else None,
            }
        )
        event = DesiredReceived(document, digest=str(hash(document.model_dump_json())))
        before = self.state
        actions = self.apply(event)
        after = self.held()
        if held is not None and generation <= held.generation:
            if held.details.get(MISSING) is None:
                assert actions == []
                assert self.state == before, "a stale or duplicate generation changes nothing"
            else:  # but it is the document there again: only the mark goes
                assert after is not None
                assert only_the_mark_changed(held, after)
        elif held is not None and held.started_once:
            assert after is not None
            if after.generation != generation:
                # rejected: the workload is untouched, and it says so
                assert not any(isinstance(a, Signal | Spawn) for a in actions)
                assert after.details["rejected"]["generation"] == generation
            else:
                # accepted: a stopped desired state never spawns, a running one never signals
                assert "rejected" not in after.details
                if state_type == "stopped":
                    assert not any(isinstance(a, Spawn) for a in actions)
                else:
                    assert not any(isinstance(a, Signal) for a in actions)
        newer = held is None or generation > held.generation
        if newer and after is not None and after.generation == generation and state_type == "stopped":
            assert after.state_type in ("stopping", "stopped")

    def send_rejection(self, delta: int | None, digest: str) -> None:
        generation = None if delta is None else max(1, self.max_generation_sent + delta)
        if generation is not None:
            self.max_generation_sent = max(self.max_generation_sent, generation)
        actions = self.apply(DesiredRejected(generation, f"bad field ({digest})", digest))
        assert not any(isinstance(a, Signal | Spawn | Forget) for a in actions), "a rejection touches nothing"

    def go_missing(self) -> None:
        """A resync snapshot (agent/resync.py) held no retained desired document for the execution."""
        held = self.held()
        actions = self.apply(DesiredMissing())
        assert not any(isinstance(a, Signal | Spawn | Forget | ClearStatus) for a in actions), (
            "absence on the broker is no deletion: nothing is stopped, started or forgotten"
        )
        after = self.held()
        if held is None:
            assert actions == []
            return
        assert after is not None
        assert only_the_mark_changed(held, after)
        if held.deleting or MISSING in held.details:
            assert actions == [], "marked once, and never while a deletion is under way"
        else:
            assert after.details[MISSING] is not None
            assert [a.document["type"] for a in actions if isinstance(a, EmitEvent)] == ["desired_missing"]

    def delete(self) -> None:
        held = self.held()
        actions = self.apply(DesiredDeleted())
        if held is not None and not held.active:
            assert isinstance(self.state, Absent)
            assert [type(a) for a in actions] == [ClearStatus, Forget]

    # --- The executor -------------------------------------------------------------------------------------

    @precondition(lambda self: self.spawning is not None)
    @rule(
        outcome=st.sampled_from(["started", "started", "started", "started", "failed", "lost"]),
        pid=st.integers(100, 200),
    )
    def spawn_reports(self, outcome: str, pid: int) -> None:
        assert self.spawning is not None
        attempt, self.spawning = self.spawning, None
        held = self.held()
        assert held is not None
        restarts = held.restart_count
        if outcome == "started":
            ref = ProcessRef(
                attempt=attempt,
                pid=pid,
                started=self.now,
                supervisor_pid=pid + 1,
                supervisor_started=self.now,
            )
            self.process = ref
            self.apply(ProcessStarted(ref))
            after = self.held()
            assert after is not None
            assert after.process == ref
            assert after.compute_reference == f"pid:{pid}"
        elif outcome == "failed":
            self.apply(SpawnFailed(attempt, "No such file or directory"))
        else:
            # The agent restarted while spawning and found no workload of that attempt.
            self.apply(SpawnLost(attempt))
            after = self.held()
            assert after is None or after.restart_count == restarts, "a lost spawn is not a restart"

    @precondition(lambda self: self.process is not None)
    @rule(code=st.sampled_from([0, 1, 2, 137, -15, None]))
    def process_exits(self, code: int | None) -> None:
        assert self.process is not None
        attempt = self.process.attempt
        self.process = None
        self.apply(ProcessExited(attempt, code))
        held = self.held()
        assert held is None or held.process is None

    @precondition(lambda self: self.process is not None)
    @rule(ok=st.booleans(), stale=st.booleans())
    def probe_reports(self, ok: bool, stale: bool) -> None:
        assert self.process is not None
        before = self.held()
        attempt = self.process.attempt + (1 if stale else 0)
        self.apply(ProbeResult(attempt, ok, "checked"))
        held = self.held()
        assert held is not None
        if stale or before is None or before.spec is None or before.spec.probe is None:
            assert held == before, "a probe result for another attempt or without a probe changes nothing"
        if not ok and before is not None and before.in_window:
            assert held.stable_at == before.stable_at, "a failed check never makes a run stable"

    @rule(outcome=st.sampled_from(["published", "retryable", "final", "resumed", "stale"]))
    def publish_reports(self, outcome: str) -> None:
        """The results edge reports on the try in flight (or a stale one, or the agent restarted)."""
        held = self.held()
        if held is None or held.publishing is None:
            return
        try_no = held.publishing.tries
        event: Event
        if outcome == "published":
            event = Published(try_no, RESULTS)
        elif outcome in ("retryable", "final"):
            event = PublishFailed(try_no, "refused", retryable=outcome == "retryable")
        elif outcome == "resumed":
            event = PublishResumed()
        else:
            event = Published(try_no - 1, RESULTS)
        in_flight = held.publishing.in_flight
        actions = self.apply(event)
        if outcome == "stale" or (not in_flight and outcome != "resumed"):
            assert actions == []
        after = self.held()
        if outcome == "published" and in_flight:
            assert after is not None
            assert after.published_results == RESULTS
            assert after.state_type in ("completed", "failed")

    @rule(
        kind=st.sampled_from(["started", "exited", "spawn_failed", "spawn_lost", "timer"]),
        offset=st.sampled_from([-1, 1, 5]),
    )
    def noise(self, kind: str, offset: int) -> None:
        """Events that must change nothing: other attempts' reports, a timer the state does not hold."""
        attempt = self.state.attempt + offset if isinstance(self.state, Execution) else offset
        event: Event
        if kind == "started":
            event = ProcessStarted(
                ProcessRef(
                    attempt=attempt, pid=1, started=self.now, supervisor_pid=2, supervisor_started=self.now
                )
            )
        elif kind == "exited":
            event = ProcessExited(attempt, 1)
        elif kind == "spawn_lost":
            event = SpawnLost(attempt)
        elif kind == "spawn_failed":
            event = SpawnFailed(attempt, "stale")
        else:
            event = TimerFired("no-such-timer")
        before = self.state
        assert self.apply(event) == []
        assert self.state == before

    # --- The clock ----------------------------------------------------------------------------------------

    def fire(self, name: str) -> None:
        held = self.held()
        assert held is not None
        assert held.deadlines[name] <= self.now
        actions = self.apply(TimerFired(name))
        after = self.held()
        if after is not None:
            assert name not in after.deadlines or after.deadlines[name] > self.now, (
                "a fired timer is not left due"
            )
        for a in actions:
            if isinstance(a, Signal) and a.signal == "SIGKILL":
                assert name == "grace"

    @rule(
        how=st.sampled_from(["advance", "next", "next", "due"]),
        delta=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 7.0, 20.0]),
        extra=st.sampled_from([0.0, 0.0, 0.25, 2.0]),
        index=st.integers(0, 3),
    )
    def tick(self, how: str, delta: float, extra: float, index: int) -> None:
        """Time moves forward, and the runtime fires a timer that is due (the next one, or any)."""
        held = self.held()
        if how == "advance" or held is None or not held.deadlines:
            self.now += delta
            return
        if how == "next":
            name, deadline = min(held.deadlines.items(), key=lambda item: item[1])
            self.now = max(self.now, deadline + extra)
        else:
            due = sorted(name for name, t in held.deadlines.items() if t <= self.now)
            if not due:
                self.now += delta
                return
            name = due[index % len(due)]
        self.fire(name)

    # --- Invariants between steps -------------------------------------------------------------------------

    @invariant()
    def executor_agrees_with_the_state(self) -> None:
        held = self.held()
        if held is None:
            assert self.process is None
            assert self.spawning is None
            return
        assert held.process == self.process
        assert held.spawn_pending == (self.spawning is not None)
        if self.spawning is not None:
            assert self.spawning == held.attempt
        assert not (held.process is not None and held.spawn_pending)

    @invariant()
    def timers_fit_the_state(self) -> None:
        held = self.held()
        if held is None:
            return
        # The declared table (agent/core/timers.py): by observed state, and by what each timer watches.
        assert set(held.deadlines) <= ARMED_IN[held.state_type], f"{held.state_type} holds {held.deadlines}"
        assert set(held.deadlines) <= held.armable(), f"{held.state_type} holds {held.deadlines}"
        if "deadline" in held.deadlines:
            assert held.stable_at is None, "the validation deadline is only armed until the run is stable"
        if "restart" in held.deadlines:
            assert not held.active, "a restart is only waited for when nothing runs"
            assert "next_restart_at" in held.observed.details
        if "grace" in held.deadlines:
            assert held.state_type == "stopping"
        if held.state_type in ("completed", "failed", "lost", "stopped"):
            assert held.deadlines == {}, f"{held.state_type} holds timers {held.deadlines}"
            assert not held.active
        if held.state_type in ("validating", "running") and held.publishing is None:
            assert held.process is not None
        if held.publishing is not None:
            assert not held.active, "results are published once the workload has ended"
            assert held.observed.message == "publishing results"
            assert "publish_deadline" in held.deadlines
            assert ("publish_retry" in held.deadlines) != held.publishing.in_flight
        else:
            assert "publish_deadline" not in held.deadlines
            assert "publish_retry" not in held.deadlines
        if held.state_type == "completed" and held.spec is not None and held.spec.publisher is not None:
            assert held.published_results is not None, "completed with a publisher means published"


LifecycleMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycleMachine = LifecycleMachine.TestCase

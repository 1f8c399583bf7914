"""Updates and autonomous rollback in the pure core, with no I/O (docs/protocol.md, "Updates and rollback").

A :class:`Node` drives :func:`agent.core.lifecycle.decide` for several executions by hand. It plays the
runtime (a ``Tell`` goes into a tiny FIFO mailbox and is delivered to its recipient), the executor (it
knows which attempt is being spawned and which process runs) and the clock. Every published status,
event and message between executions is recorded, so a test can assert the whole exchange.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from agent.core.actions import Action, EmitEvent, PublishStatus, Signal, Spawn, Tell
from agent.core.clock import Now
from agent.core.events import (
    DesiredDeleted,
    DesiredReceived,
    Event,
    HandOver,
    Mail,
    ProcessExited,
    ProcessStarted,
    Released,
    RollbackFrom,
    RolledBack,
    SuccessorStable,
    TimerFired,
)
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.status import status_document
from agent.protocol import DesiredDocument, Spec, rfc3339
from tests.support.transitions import assert_legal_transitions

NODE = "node-1"
T0 = 1_800_000_000.0
WINDOW_S = 10.0


def make_spec(strategy: str = "stop_first", policy: str = "never", window_s: float = WINDOW_S) -> Spec:
    return Spec.model_validate(
        {
            "command": ["/bin/server"],
            "restart": {"policy": policy, "max_restarts": 3, "backoff_s": 1.0, "backoff_max_s": 8.0},
            "validation": {"window_s": window_s, "deadline_s": 60.0},
            "stop": {"signal": "SIGTERM", "grace_s": 5.0},
            "update_strategy": strategy,
        }
    )


@dataclass(frozen=True)
class Letter:
    """One message between executions, as the mailbox carried it."""

    sender: str
    recipient: str
    mail: Mail


class Node:
    """Executions of one node, driven through ``decide``; mail is delivered in order unless held."""

    def __init__(self) -> None:
        self.now = T0
        self.executions: dict[str, Execution | Absent] = {}
        self.published: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.events: list[dict[str, Any]] = []
        self.signals: dict[str, list[str]] = defaultdict(list)
        self.mailbox: deque[Letter] = deque()
        self.letters: list[Letter] = []  # every message ever sent, in order
        self.pids = 1000
        self.hold = False  # True: mail waits in the mailbox until deliver() is called

    # --- driving --------------------------------------------------------------------------------------

    def apply(self, eid: str, event: Event) -> list[Action]:
        before = self.executions.get(eid, Absent(execution_id=eid, node_id=NODE))
        after, actions = decide(before, event, Now(self.now, self.now))
        self._check(eid, before, after, actions)
        self.executions[eid] = after
        for action in actions:
            match action:
                case PublishStatus(document=document):
                    self.published[eid].append(document)
                case EmitEvent(document=document):
                    self.events.append(document)
                case Signal(signal=name):
                    self.signals[eid].append(name)
                case Tell(execution_id=recipient, event=mail):
                    letter = Letter(eid, recipient, mail)
                    self.letters.append(letter)
                    self.mailbox.append(letter)
        if not self.hold:
            self.deliver()
        return actions

    def deliver(self, count: int | None = None) -> None:
        """Hand queued mail to its recipients (and what that sends in turn), like the runtime's queue."""
        delivered = 0
        while self.mailbox and (count is None or delivered < count):
            letter = self.mailbox.popleft()
            delivered += 1
            hold, self.hold = self.hold, True
            try:
                self.apply(letter.recipient, letter.mail)
            finally:
                self.hold = hold
        if count is None and self.mailbox:
            self.deliver()

    def at(self, t: float) -> Node:
        assert T0 + t >= self.now, "time goes forward"
        self.now = T0 + t
        return self

    def desired(
        self,
        eid: str,
        generation: int = 1,
        state_type: str = "running",
        *,
        previous: str | None = None,
        spec: Spec | None = None,
    ) -> list[Action]:
        document = DesiredDocument.model_validate(
            {
                "execution_id": eid,
                "generation": generation,
                "desired_state": {"state_type": state_type},
                "previous_execution_id": previous,
                "spec": (spec or make_spec()).model_dump(),
            }
        )
        return self.apply(eid, DesiredReceived(document, digest=f"{eid}-{generation}-{state_type}"))

    def delete(self, eid: str) -> list[Action]:
        return self.apply(eid, DesiredDeleted())

    def started(self, eid: str) -> list[Action]:
        """The spawn under way for ``eid`` reports its process."""
        state = self.execution(eid)
        assert state.spawn_pending, f"{eid} is not being spawned"
        self.pids += 1
        ref = ProcessRef(
            attempt=state.attempt, pid=self.pids, started=self.now, supervisor_pid=1, supervisor_started=T0
        )
        return self.apply(eid, ProcessStarted(ref))

    def exited(self, eid: str, code: int | None) -> list[Action]:
        state = self.execution(eid)
        assert state.process is not None, f"{eid} has no process"
        return self.apply(eid, ProcessExited(state.process.attempt, code))

    def fire(self, eid: str, name: str) -> list[Action]:
        """Let time run to ``eid``'s timer ``name`` and fire it."""
        deadline = self.execution(eid).deadlines[name]
        self.now = max(self.now, deadline)
        return self.apply(eid, TimerFired(name))

    def run_stable(self, eid: str, **kwargs: Any) -> None:
        """A new execution, spawned, up and past its validation window."""
        self.desired(eid, **kwargs)
        self.started(eid)
        self.fire(eid, "window")
        assert self.state_of(eid) == "running"

    # --- reading --------------------------------------------------------------------------------------

    def execution(self, eid: str) -> Execution:
        state = self.executions[eid]
        assert isinstance(state, Execution), state
        return state

    def state_of(self, eid: str) -> str:
        return self.execution(eid).state_type

    def states(self, eid: str, since: int = 0) -> list[str]:
        return [d["observed_state"]["state_type"] for d in self.published[eid][since:]]

    def messages(self, eid: str, since: int = 0) -> list[tuple[str, str]]:
        return [
            (d["observed_state"]["state_type"], d["observed_state"]["message"])
            for d in self.published[eid][since:]
        ]

    def mark(self, eid: str) -> int:
        return len(self.published[eid])

    def last(self, eid: str) -> dict[str, Any]:
        return self.published[eid][-1]

    def exchanged(self, since: int = 0) -> list[tuple[str, str, Mail]]:
        return [(letter.sender, letter.recipient, letter.mail) for letter in self.letters[since:]]

    def rollbacks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "rollback"]

    # --- what holds for every decision ----------------------------------------------------------------

    def _check(
        self, eid: str, before: Execution | Absent, after: Execution | Absent, actions: list[Action]
    ) -> None:
        docs = [a for a in actions if isinstance(a, PublishStatus)]
        assert [p.revision for p in docs] == list(range(before.revision + 1, before.revision + 1 + len(docs)))
        assert after.revision == before.revision + len(docs)
        for p in docs:
            assert p.execution_id == eid
            assert p.document["revision"] == p.revision
        views = [{k: v for k, v in p.document.items() if k not in ("revision", "updated_at")} for p in docs]
        assert all(a != b for a, b in pairwise(views)), "an unchanged status was republished"
        if isinstance(after, Execution) and docs:
            assert docs[-1].document == status_document(after)
        for action in actions:
            if isinstance(action, Tell):
                assert action.execution_id != eid, "an execution wrote to itself"
            if isinstance(action, Spawn | Signal):
                assert action.execution_id == eid
        assert_legal_transitions(before, actions)


# --- Hand-over ----------------------------------------------------------------------------------------------


def test_stop_first_stops_p_and_only_then_starts_n() -> None:
    node = Node()
    node.run_stable("p")
    p_mark = node.mark("p")
    p_pid = node.execution("p").process
    n_actions = node.at(20).desired("n", previous="p")
    # N waits, and only asked P to go: nothing of N is spawned yet.
    assert not [a for a in n_actions if isinstance(a, Spawn)]
    assert node.messages("n") == [
        ("pending", ""),
        ("pending", "waiting for p to stop (update_strategy stop_first)"),
        # Released only comes once P has stopped: nothing more for N until then.
    ]
    assert node.execution("n").waiting_for_previous
    assert node.messages("p", p_mark) == [("stopping", "stopping for the update to n")]
    assert node.signals["p"] == ["SIGTERM"]
    assert node.last("p")["next_execution_id"] == "n"
    assert node.exchanged() == [("n", "p", HandOver("n", "stop_first"))]

    node.at(21).exited("p", 143)
    assert node.messages("p", p_mark)[-1] == ("stopped", "stopped for the update to n")
    assert node.exchanged() == [
        ("n", "p", HandOver("n", "stop_first")),
        ("p", "n", Released("p", known=True)),
    ]
    assert node.states("n") == ["pending", "pending", "starting"]
    assert node.execution("n").spawn_pending
    node.at(22).started("n")
    node.fire("n", "window")
    assert node.states("n") == ["pending", "pending", "starting", "validating", "running"]
    assert node.states("p", p_mark) == ["stopping", "stopped"]
    p = node.last("p")
    assert p["next_execution_id"] == "n"
    assert p["stable_at"] is not None
    assert p["run_output"]["exit_code"] == 143
    assert p_pid is not None
    assert node.execution("p").process is None
    assert node.last("n")["previous_execution_id"] == "p"
    assert node.last("n")["next_execution_id"] is None
    assert node.events == []  # no rollback, nothing else


def test_start_first_runs_both_and_stops_p_once_n_is_stable() -> None:
    node = Node()
    node.run_stable("p")
    p_mark = node.mark("p")
    n_actions = node.at(20).desired("n", previous="p", spec=make_spec("start_first"))
    assert [a for a in n_actions if isinstance(a, Spawn)], "start_first spawns N at once"
    assert node.states("n") == ["pending", "starting"]
    # P keeps running, knows its successor, and is not signalled.
    assert node.states("p", p_mark) == ["running"]
    assert node.last("p")["next_execution_id"] == "n"
    assert node.signals["p"] == []
    node.at(21).started("n")
    assert node.state_of("p") == "running"
    assert node.state_of("n") == "validating"
    assert node.exchanged() == [("n", "p", HandOver("n", "start_first"))]

    node.fire("n", "window")
    assert node.states("n") == ["pending", "starting", "validating", "running"]
    assert node.messages("p", p_mark)[1:] == [("stopping", "stopping for the update to n, which is stable")]
    assert node.signals["p"] == ["SIGTERM"]
    node.exited("p", 143)
    assert node.messages("p", p_mark)[1:] == [
        ("stopping", "stopping for the update to n, which is stable"),
        ("stopped", "stopped for the update to n"),
    ]
    assert node.exchanged() == [
        ("n", "p", HandOver("n", "start_first")),
        ("n", "p", SuccessorStable("n")),
        ("p", "n", Released("p", known=True)),
    ]
    # Released means nothing to an N that already runs: no revision for it.
    assert node.states("n")[-1] == "running"
    assert len(node.published["n"]) == 4
    assert node.last("p")["next_execution_id"] == "n"


def test_unknown_previous_answers_released_and_n_just_starts() -> None:
    node = Node()
    node.desired("n", previous="ghost")
    assert node.exchanged() == [
        ("n", "ghost", HandOver("n", "stop_first")),
        ("ghost", "n", Released("ghost", known=False)),
    ]
    assert node.states("n") == ["pending", "pending", "starting"]
    assert node.execution("n").spawn_pending
    assert isinstance(node.executions["ghost"], Absent)
    assert node.published["ghost"] == []


def test_a_finished_p_is_left_as_it_is_and_releases_n_at_once() -> None:
    node = Node()
    node.desired("p")
    node.started("p")
    node.fire("p", "window")
    node.at(30).exited("p", 0)
    assert node.state_of("p") == "completed"
    p_mark = node.mark("p")
    node.desired("n", previous="p")
    assert node.states("p", p_mark) == ["completed"]  # only next_execution_id changed
    assert node.last("p")["next_execution_id"] == "n"
    assert node.exchanged()[-1] == ("p", "n", Released("p", known=True))
    assert node.states("n")[-1] == "starting"


# --- Rollback -----------------------------------------------------------------------------------------------


def update_that_fails(node: Node, strategy: str = "stop_first") -> None:
    """P is stable; N (previous P) runs and exits 3 before its window passes."""
    node.run_stable("p")
    node.at(20).desired("n", previous="p", spec=make_spec(strategy))
    if strategy == "stop_first":
        node.at(21).exited("p", 143)
    node.at(22).started("n")
    node.at(23).exited("n", 3)


def test_stop_first_rollback_runs_p_again_through_starting_validating_running() -> None:
    node = Node()
    node.run_stable("p")
    stable_at = node.last("p")["stable_at"]
    p_mark = node.mark("p")
    node.at(20).desired("n", previous="p")
    node.at(21).exited("p", 143)
    node.at(22).started("n")
    handed = len(node.letters)
    node.at(23).exited("n", 3)

    assert node.exchanged(handed) == [
        ("n", "p", RollbackFrom("n")),
        ("p", "n", RolledBack("p")),
    ]
    when = rfc3339(T0 + 23)
    assert node.states("p", p_mark) == ["stopping", "stopped", "starting"]
    assert node.messages("p", p_mark)[-1] == ("starting", "rolling back from n")
    assert node.last("p")["details"]["rollback"] == {"from": "n", "at": when}
    assert node.execution("p").spawn_pending  # a new attempt of P
    assert node.rollbacks() == [
        {"type": "rollback", "node_id": NODE, "execution_id": "p", "at": when, "from": "n", "to": "p"}
    ]
    n = node.last("n")
    assert n["observed_state"]["state_type"] == "failed"
    assert n["stable_at"] is None
    assert n["details"]["rolled_back_to"] == "p"
    assert node.states("n") == ["pending", "pending", "starting", "validating", "failed", "failed"]

    node.at(24).started("p")
    process = node.execution("p").process
    assert process is not None
    assert process.attempt == 2  # a new attempt of P
    node.fire("p", "window")
    assert node.states("p", p_mark) == ["stopping", "stopped", "starting", "validating", "running"]
    p = node.last("p")
    assert p["stable_at"] == stable_at, "stable_at never changes"
    assert p["details"]["rollback"] == {"from": "n", "at": when}
    assert p["next_execution_id"] == "n"
    assert p["restart_count"] == 0  # a rollback is not a restart
    assert node.state_of("n") == "failed"


def test_start_first_rollback_keeps_p_running_with_the_same_process() -> None:
    node = Node()
    node.run_stable("p")
    process = node.execution("p").process
    p_mark = node.mark("p")
    update_count = len(node.letters)
    node.at(20).desired("n", previous="p", spec=make_spec("start_first"))
    node.at(21).started("n")
    node.at(22).exited("n", 3)
    assert node.exchanged(update_count) == [
        ("n", "p", HandOver("n", "start_first")),
        ("n", "p", RollbackFrom("n")),
        ("p", "n", RolledBack("p")),
    ]
    assert node.states("p", p_mark) == ["running", "running"]  # next_execution_id, then the rollback
    assert node.last("p")["details"]["rollback"] == {"from": "n", "at": rfc3339(T0 + 22)}
    assert node.execution("p").process == process
    assert node.signals["p"] == []
    assert len(node.rollbacks()) == 1
    assert node.last("n")["details"]["rolled_back_to"] == "p"


def test_rollback_at_most_once_per_failed_execution() -> None:
    node = Node()
    update_that_fails(node)
    p_mark = node.mark("p")
    n_mark = node.mark("n")
    sent = len(node.letters)
    # The same request again (as after a crash that repeated it): P already rolled back from N.
    node.apply("p", RollbackFrom("n"))
    assert node.mark("p") == p_mark
    assert node.mark("n") == n_mark
    assert node.exchanged(sent) == []
    assert len(node.rollbacks()) == 1


def test_a_previous_never_stable_is_not_rolled_back_to() -> None:
    node = Node()
    node.desired("p")
    node.started("p")  # validating, never stable
    p_mark = node.mark("p")
    node.at(2).desired("n", previous="p")
    node.at(3).exited("p", 143)
    node.at(4).started("n")
    sent = len(node.letters)
    node.at(5).exited("n", 3)
    # N asks, P (stable_at null) does not answer; nothing runs.
    assert node.exchanged(sent) == [("n", "p", RollbackFrom("n"))]
    assert node.states("p", p_mark) == ["stopping", "stopped"]
    assert node.last("p")["stable_at"] is None
    assert "rollback" not in node.last("p")["details"]
    assert "rolled_back_to" not in node.last("n")["details"]
    assert node.rollbacks() == []
    assert not node.execution("p").active


def test_a_failed_execution_that_was_stable_asks_for_no_rollback() -> None:
    node = Node()
    node.run_stable("p")
    node.at(20).desired("n", previous="p")
    node.at(21).exited("p", 143)
    node.at(22).started("n")
    node.fire("n", "window")  # N is stable
    sent = len(node.letters)
    node.at(40).exited("n", 3)
    assert node.state_of("n") == "failed"
    assert node.exchanged(sent) == []
    assert node.state_of("p") == "stopped"
    assert node.rollbacks() == []


def test_a_resurrected_p_that_fails_later_triggers_no_further_rollback() -> None:
    node = Node()
    node.run_stable("p0")
    node.at(20).desired("p", previous="p0")
    node.at(21).exited("p0", 143)
    node.at(22).started("p")
    node.fire("p", "window")  # P stable, P0 stopped for it
    node.at(40).desired("n", previous="p")
    node.at(41).exited("p", 143)
    node.at(42).started("n")
    node.at(43).exited("n", 3)
    node.at(44).started("p")  # P rolled back
    node.fire("p", "window")
    assert len(node.rollbacks()) == 1
    sent = len(node.letters)
    p0_mark = node.mark("p0")
    node.at(60).exited("p", 137)  # P's new process is killed, policy never
    assert node.state_of("p") == "failed"
    assert node.exchanged(sent) == []
    assert node.mark("p0") == p0_mark
    assert node.state_of("p0") == "stopped"
    assert node.state_of("n") == "failed"
    assert len(node.rollbacks()) == 1
    assert not any(node.execution(e).active for e in ("p0", "p", "n"))


def test_a_newer_generation_of_p_from_the_orchestrator_wins_over_rollback() -> None:
    node = Node()
    node.run_stable("p")
    node.at(20).desired("n", previous="p")
    node.at(21).exited("p", 143)
    node.at(22).started("n")
    p_mark = node.mark("p")
    node.desired("p", 2, "stopped")  # after the hand-over, before N fails
    node.at(23).exited("n", 3)
    assert node.states("p", p_mark) == ["stopped"]  # generation 2, nothing else
    assert node.last("p")["observed_generation"] == 2
    assert "rollback" not in node.last("p")["details"]
    assert node.rollbacks() == []
    assert not node.execution("p").active
    assert "rolled_back_to" not in node.last("n")["details"]


def test_a_newer_running_generation_of_p_also_wins_under_start_first() -> None:
    """The orchestrator re-stated P (a new message) after N took over: P is its business now."""
    node = Node()
    node.run_stable("p")
    node.at(20).desired("n", previous="p", spec=make_spec("start_first"))
    node.at(21).started("n")
    node.desired("p", 2, "running")
    p_mark = node.mark("p")
    node.at(22).exited("n", 3)
    assert node.mark("p") == p_mark
    assert node.rollbacks() == []
    assert node.state_of("p") == "running"


def test_p_stopped_by_request_is_not_rolled_back_to() -> None:
    node = Node()
    node.run_stable("p")
    node.at(15).desired("p", 2, "stopped")
    node.exited("p", 143)
    node.at(20).desired("n", previous="p")  # P is already stopped: released at once
    node.at(21).started("n")
    node.at(22).exited("n", 3)
    assert node.rollbacks() == []
    assert node.state_of("p") == "stopped"


def test_a_completed_p_is_not_run_again_by_a_rollback() -> None:
    node = Node()
    node.desired("p")
    node.started("p")
    node.fire("p", "window")
    node.at(30).exited("p", 0)  # a stable batch job that finished
    node.at(40).desired("n", previous="p")
    node.at(41).started("n")
    node.at(42).exited("n", 3)
    assert node.state_of("p") == "completed"
    assert not node.execution("p").active


# --- Deletion ----------------------------------------------------------------------------------------------


def test_deleting_p_while_it_stops_for_n_still_releases_n() -> None:
    node = Node()
    node.run_stable("p")
    node.at(20).desired("n", previous="p")
    node.delete("p")  # the orchestrator cleans up the old execution straight away
    node.at(21).exited("p", 143)
    assert isinstance(node.executions["p"], Absent)
    assert node.state_of("n") == "starting"


def test_deleting_p_after_it_stopped_for_n_leaves_n_running_and_a_failure_is_not_rolled_back() -> None:
    node = Node()
    node.run_stable("p")
    node.at(20).desired("n", previous="p")
    node.at(21).exited("p", 143)
    node.delete("p")
    assert isinstance(node.executions["p"], Absent)
    node.at(22).started("n")
    node.at(23).exited("n", 3)
    assert node.exchanged()[-1] == ("n", "p", RollbackFrom("n"))
    assert isinstance(node.executions["p"], Absent)
    assert node.rollbacks() == []
    assert "rolled_back_to" not in node.last("n")["details"]


# --- Chains ------------------------------------------------------------------------------------------------


def test_chain_of_three_updates_leaves_only_the_last_running() -> None:
    node = Node()
    node.run_stable("p1")
    node.at(20).desired("p2", previous="p1")
    node.exited("p1", 143)
    node.started("p2")
    node.fire("p2", "window")
    node.at(40).desired("p3", previous="p2")
    node.exited("p2", 143)
    node.started("p3")
    node.fire("p3", "window")
    assert [node.state_of(e) for e in ("p1", "p2", "p3")] == ["stopped", "stopped", "running"]
    assert node.last("p1")["next_execution_id"] == "p2"
    assert node.last("p2")["next_execution_id"] == "p3"
    assert node.last("p3")["next_execution_id"] is None
    assert [(s, r, type(m).__name__) for s, r, m in node.exchanged()] == [
        ("p2", "p1", "HandOver"),
        ("p1", "p2", "Released"),
        ("p3", "p2", "HandOver"),
        ("p2", "p3", "Released"),
    ]
    assert node.rollbacks() == []


def test_rollback_in_the_middle_of_a_chain_runs_the_middle_again_and_leaves_the_first_alone() -> None:
    node = Node()
    node.run_stable("p1")
    node.at(20).desired("p2", previous="p1")
    node.exited("p1", 143)
    node.started("p2")
    node.fire("p2", "window")
    p1_mark = node.mark("p1")
    node.at(40).desired("p3", previous="p2")
    node.exited("p2", 143)
    node.started("p3")
    node.at(41).exited("p3", 3)
    node.started("p2")
    node.fire("p2", "window")
    assert [node.state_of(e) for e in ("p1", "p2", "p3")] == ["stopped", "running", "failed"]
    assert node.mark("p1") == p1_mark, "P1 is not touched"
    assert node.last("p2")["details"]["rollback"]["from"] == "p3"
    assert node.last("p3")["details"]["rolled_back_to"] == "p2"
    assert [e["execution_id"] for e in node.rollbacks()] == ["p2"]
    assert all(letter.recipient != "p1" for letter in node.letters[2:])


def test_update_of_an_execution_that_is_rolling_back_stops_it_for_the_new_one() -> None:
    node = Node()
    node.run_stable("p1")
    node.at(20).desired("p2", previous="p1")
    node.exited("p1", 143)
    node.started("p2")
    node.at(21).exited("p2", 3)
    assert node.state_of("p1") == "starting"  # rolling back, spawn under way
    p1_mark = node.mark("p1")
    node.at(22).desired("p3", previous="p1")
    assert node.messages("p1", p1_mark) == [("stopping", "stopping for the update to p3")]
    assert node.state_of("p3") == "pending"
    node.started("p1")  # the spawn reports back: it is stopped at once
    assert node.signals["p1"] == ["SIGTERM", "SIGTERM"]
    node.at(23).exited("p1", 143)
    assert node.messages("p1", p1_mark)[-1] == ("stopped", "stopped for the update to p3")
    assert node.last("p1")["next_execution_id"] == "p3"
    node.started("p3")
    node.fire("p3", "window")
    assert [node.state_of(e) for e in ("p1", "p2", "p3")] == ["stopped", "failed", "running"]
    assert len(node.rollbacks()) == 1


def test_update_of_an_execution_validating_its_rollback_stops_it_for_the_new_one() -> None:
    node = Node()
    node.run_stable("p1")
    node.at(20).desired("p2", previous="p1")
    node.exited("p1", 143)
    node.started("p2")
    node.at(21).exited("p2", 3)
    node.started("p1")
    assert node.state_of("p1") == "validating"
    p1_mark = node.mark("p1")
    node.at(22).desired("p3", previous="p1")
    node.exited("p1", 143)
    assert node.states("p1", p1_mark) == ["stopping", "stopped"]
    node.started("p3")
    node.fire("p3", "window")
    assert [node.state_of(e) for e in ("p1", "p2", "p3")] == ["stopped", "failed", "running"]


# --- Odds and ends ---------------------------------------------------------------------------------------


def test_p_waiting_for_a_restart_is_stopped_for_the_update_with_the_stopped_message() -> None:
    node = Node()
    node.run_stable("p", spec=make_spec(policy="on-failure"))
    node.at(20).exited("p", 1)
    assert node.state_of("p") == "degraded"  # waiting for its restart
    node.at(20.5).desired("n", previous="p")
    assert node.messages("p")[-1] == ("stopped", "stopped for the update to n")
    assert node.state_of("n") == "starting"


def test_p_waiting_for_a_restart_is_stopped_and_releases_n() -> None:
    node = Node()
    node.run_stable("p", spec=make_spec(policy="on-failure"))
    node.at(20).exited("p", 1)
    node.at(20.5).desired("n", previous="p")
    assert node.state_of("p") == "stopped"
    assert "restart" not in node.execution("p").deadlines
    assert node.exchanged()[-1] == ("p", "n", Released("p", known=True))
    assert node.state_of("n") == "starting"


def test_n_stopped_while_waiting_for_p_does_not_start_when_released() -> None:
    node = Node()
    node.run_stable("p")
    node.hold = True
    node.at(20).desired("n", previous="p")
    node.deliver()  # HandOver: P stops
    node.desired("n", 2, "stopped")
    node.at(21).exited("p", 143)
    node.deliver()  # Released reaches an N that no longer wants to run
    assert node.state_of("n") == "stopped"
    assert not node.execution("n").active

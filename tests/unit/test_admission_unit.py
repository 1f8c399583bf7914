"""Admission without I/O (agent/core/admission.py): cordon and limits.max_executions, by the contract's
rules (PROTOCOL.md, Node control and admission)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.admission import CORDONED, full, places_taken, refusal, screen
from agent.core.events import DesiredReceived, DesiredRejected
from agent.core.model import Absent, Execution
from agent.protocol import DesiredDocument, ObservedState

NODE = "node-1"


def execution(eid: str, state: str, previous: str | None = None, generation: int = 1) -> Execution:
    return Execution(
        execution_id=eid,
        node_id=NODE,
        job_id="job",
        revision=3,
        generation=generation,
        created_at=0.0,
        updated_at=0.0,
        observed=ObservedState(state_type=state),  # type: ignore[arg-type]
        previous_execution_id=previous,
    )


def arrival(
    eid: str, generation: int = 1, state: str = "running", previous: str | None = None
) -> DesiredReceived:
    raw: dict[str, Any] = {
        "execution_id": eid,
        "generation": generation,
        "desired_state": {"state_type": state},
        "previous_execution_id": previous,
        "spec": {"command": ["sleep", "60"]},
    }
    return DesiredReceived(DesiredDocument.model_validate(raw), "digest")


def node(*executions: Execution) -> dict[str, Execution]:
    return {e.execution_id: e for e in executions}


def absent(eid: str) -> Absent:
    return Absent(execution_id=eid, node_id=NODE)


def decide(
    known: dict[str, Execution], event: DesiredReceived, *, cordoned: bool = False, limit: int | None = None
) -> str | None:
    state = known.get(event.document.execution_id) or absent(event.document.execution_id)
    return refusal(known, state, event, cordoned=cordoned, max_executions=limit)


def test_finished_executions_take_no_place_and_an_update_shares_its_predecessors() -> None:
    known = node(
        execution("a", "running"),
        execution("b", "pending"),
        execution("c", "completed"),
        execution("d", "failed"),
        execution("e", "lost"),
        execution("f", "stopped"),
        execution("g", "stopping"),
        execution("a2", "starting", previous="a"),  # start_first: both run for a while
        execution("f2", "running", previous="f"),  # its predecessor is finished: its own place
    )
    assert places_taken(known) == 4  # a+a2, b, g, f2


def test_a_full_node_rejects_a_new_execution_whatever_its_desired_state() -> None:
    known = node(execution("a", "running"), execution("b", "validating"))
    for state in ("running", "pending", "stopped"):
        assert (
            decide(known, arrival("new", state=state), limit=2) == full(2) == "node is full: max_executions 2"
        )
    assert decide(known, arrival("new"), limit=3) is None
    assert decide(known, arrival("new")) is None, "no limit"


def test_stop_delete_and_new_generations_of_known_executions_always_pass() -> None:
    known = node(
        execution("a", "running"), execution("b", "completed"), execution("c", "stopped", generation=2)
    )
    assert decide(known, arrival("a", 2, "stopped"), limit=1) is None
    assert decide(known, arrival("a", 2, "running"), limit=1) is None, "a message change"
    assert decide(known, arrival("b", 2, "running"), limit=1) is None, "finished results stay finished"
    assert decide(known, arrival("c", 3, "stopped"), limit=1) is None
    assert decide(known, arrival("c", 2, "running"), limit=1) is None, "stale: the lifecycle ignores it"


def test_a_stopped_execution_asked_to_run_again_needs_a_place() -> None:
    known = node(execution("a", "running"), execution("c", "stopped"))
    assert decide(known, arrival("c", 2, "running"), limit=1) == full(1)
    assert decide(known, arrival("c", 2, "running"), limit=2) is None


def test_an_update_takes_over_its_predecessors_place() -> None:
    known = node(execution("a", "running"), execution("b", "running"))
    assert decide(known, arrival("a2", previous="a"), limit=2) is None
    with_update = node(*known.values(), execution("a2", "pending", previous="a"))
    assert places_taken(with_update) == 2
    assert decide(with_update, arrival("a2", 2, previous="a"), limit=2) is None
    assert decide(with_update, arrival("a3", previous="a"), limit=2) == full(2), "a's place is taken by a2"
    assert decide(with_update, arrival("x"), limit=2) == full(2)
    assert decide(known, arrival("z2", previous="z"), limit=2) == full(2), "z is not on this node"
    finished = node(execution("a", "stopped"), execution("b", "running"))
    assert decide(finished, arrival("a2", previous="a"), limit=1) == full(1), "a finished: no place to take"


def test_a_cordoned_node_rejects_what_it_does_not_know_updates_included() -> None:
    known = node(execution("a", "running"), execution("c", "stopped"))
    assert decide(known, arrival("new"), cordoned=True) == CORDONED == "node is cordoned"
    assert decide(known, arrival("a2", previous="a"), cordoned=True) == CORDONED
    assert decide(known, arrival("a", 2, "stopped"), cordoned=True) is None
    assert decide(known, arrival("c", 2, "running"), cordoned=True) is None, "it knows c"
    assert decide(known, arrival("new", state="stopped"), cordoned=True, limit=9) == CORDONED


def test_never_accepted_counts_as_unknown() -> None:
    rejected_only = execution("r", "failed", generation=0)
    assert refusal({}, rejected_only, arrival("r"), cordoned=True, max_executions=None) == CORDONED


@pytest.mark.parametrize(("cordoned", "limit"), [(True, None), (False, 1)])
def test_screen_makes_a_rejection_whose_digest_carries_the_reason(cordoned: bool, limit: int | None) -> None:
    known = node(execution("a", "running"))
    rejected = screen(known, absent("n"), arrival("n", 5), cordoned=cordoned, max_executions=limit)
    assert isinstance(rejected, DesiredRejected)
    assert rejected.generation == 5
    assert rejected.digest == f"digest:{rejected.reason}"
    passed = screen(known, absent("n"), arrival("n", 5), cordoned=False, max_executions=None)
    assert passed == arrival("n", 5)


# --- The limit holds over any sequence (hypothesis) ------------------------------------------------------

IDS = [f"e{i}" for i in range(8)]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.lists(
        st.tuples(
            st.sampled_from(["new", "update", "finish", "stop", "run_again"]),
            st.sampled_from(IDS),
            st.sampled_from(IDS),
        ),
        max_size=40,
    ),
)
def test_the_limit_holds_and_updates_and_stops_always_pass(
    limit: int, steps: list[tuple[str, str, str]]
) -> None:
    """Whatever arrives in whatever order, admission never takes the places beyond max_executions; a stop
    of a known execution and an update of an unfinished one nobody else took over are always admitted.

    An end can add a place: in a chain of updates e0 <- e2 <- e1, e2 failing (or stopped) leaves e0 (rolled
    back) and e1 in places of their own. That is the rollback working as usual, not an admission (docs/protocol.md).
    """
    known: dict[str, Execution] = {}
    for op, eid, other in steps:
        before = places_taken(known)
        state = known.get(eid) or absent(eid)
        generation = (known[eid].generation + 1) if eid in known else 1
        if op in ("new", "update") and eid not in known:
            previous = other if op == "update" and other != eid else None
            event = arrival(eid, previous=previous)
            takes_over = (
                previous in known
                and known[previous].state_type not in ("completed", "failed", "lost", "stopped")
                and not any(
                    e.previous_execution_id == previous
                    and e.state_type not in ("completed", "failed", "lost", "stopped")
                    for e in known.values()
                )
            )
            reason = refusal(known, state, event, cordoned=False, max_executions=limit)
            if takes_over:
                assert reason is None, "an update takes its predecessor's place"
            if reason is None:
                known[eid] = execution(eid, "starting", previous=previous)
        elif op == "stop" and eid in known:
            event = arrival(eid, generation, "stopped")
            assert refusal(known, state, event, cordoned=True, max_executions=limit) is None
            known[eid] = known[eid].replace(
                observed=ObservedState(state_type="stopped"), generation=generation
            )
        elif op == "finish" and eid in known:
            known[eid] = known[eid].replace(observed=ObservedState(state_type="completed"))
        elif op == "run_again" and eid in known and known[eid].state_type == "stopped":
            event = arrival(eid, generation, "running")
            if refusal(known, state, event, cordoned=False, max_executions=limit) is None:
                known[eid] = known[eid].replace(
                    observed=ObservedState(state_type="starting"), generation=generation
                )
        if op not in ("finish", "stop"):  # an end (a stop too) may split a chain into two places
            assert places_taken(known) <= max(limit, before), (limit, steps)

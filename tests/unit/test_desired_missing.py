"""A known execution whose retained desired document is gone is kept and marked, never deleted.

The core's rule (agent/core/lifecycle.py, "A desired document gone from the broker"): on
``DesiredMissing`` the status gets ``details.desired_missing_since`` (a new revision) and an event
``desired_missing``; the workload is not touched. Any retained payload for it again (the same generation,
a newer one, even a bad one) clears the mark with an event ``desired_restored``.
"""

from __future__ import annotations

from agent.core.actions import Action, EmitEvent, PublishStatus, Signal, Spawn
from agent.core.events import DesiredDeleted, DesiredMissing
from agent.core.lifecycle import MISSING
from agent.protocol import rfc3339
from tests.unit.test_lifecycle import T0, Run, absent, desired, exited, publishes, rejection, run, started


def events_of(actions: list[Action]) -> list[str]:
    return [a.document["type"] for a in actions if isinstance(a, EmitEvent)]


def running() -> Run:
    return run(absent(), desired(1), started(1))


def test_a_missing_document_marks_the_status_and_touches_nothing() -> None:
    history = running()
    before = history.execution
    marked = history.then((5.0, DesiredMissing()))
    actions = marked.last
    assert events_of(actions) == ["desired_missing"]
    [status] = publishes(actions)
    assert status.revision == before.revision + 1
    assert status.document["details"][MISSING] == rfc3339(T0 + 5.0)
    assert status.document["observed_state"] == before.observed.model_dump(mode="json")
    assert not [a for a in actions if isinstance(a, Signal | Spawn)]
    assert marked.execution.process == before.process


def test_missing_again_changes_nothing() -> None:
    history = running().then((5.0, DesiredMissing()))
    marked = history.execution
    again = history.then((9.0, DesiredMissing()))
    assert again.last == []
    assert again.execution == marked


def test_the_same_document_again_clears_the_mark_with_an_event() -> None:
    history = running().then((5.0, DesiredMissing()))
    revision = history.execution.revision
    restored = history.then((7.0, desired(1)))  # a stale generation: otherwise ignored
    assert events_of(restored.last) == ["desired_restored"]
    [status] = publishes(restored.last)
    assert status.revision == revision + 1
    assert MISSING not in status.document["details"]
    assert restored.execution.generation == 1


def test_a_newer_generation_clears_the_mark_and_is_acted_on() -> None:
    history = running().then((5.0, DesiredMissing()))
    stopped = history.then((7.0, desired(2, "stopped")))
    assert "desired_restored" in events_of(stopped.last)
    assert MISSING not in stopped.execution.details
    assert stopped.execution.state_type == "stopping"


def test_a_bad_document_is_a_document_too() -> None:
    history = running().then((5.0, DesiredMissing()))
    rejected = history.then((7.0, rejection(2)))
    assert events_of(rejected.last) == ["desired_restored", "desired_rejected"]
    assert MISSING not in rejected.execution.details


def test_a_finished_execution_is_marked_too_and_a_deletion_under_way_is_not() -> None:
    done = running().then(exited(1, 0)).then((5.0, DesiredMissing()))
    assert done.execution.state_type == "completed"
    assert MISSING in done.execution.details
    deleting = running().then(DesiredDeleted())
    assert deleting.execution.deleting
    assert deleting.then(DesiredMissing()).last == []


def test_an_unknown_execution_is_not_created_by_a_missing_document() -> None:
    history = run(absent(3), DesiredMissing())
    assert history.last == []
    assert history.state == absent(3)


def test_a_marked_execution_is_deleted_as_usual() -> None:
    history = running().then((5.0, DesiredMissing()), DesiredDeleted())
    assert history.execution.state_type == "stopping"
    assert any(isinstance(a, PublishStatus) for a in history.last)

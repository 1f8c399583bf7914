"""Publishing results in the lifecycle core (docs/protocol.md, Results): pure decisions, no I/O."""

from __future__ import annotations

from typing import Any

from agent.core.actions import Forget, Publish
from agent.core.events import DesiredDeleted, Published, PublishFailed, PublishResumed
from agent.core.model import Execution
from agent.core.timers import Timer
from agent.protocol import PublishedResults, ResultsMetadata, rfc3339
from tests.unit.test_lifecycle import (
    EID,
    T0,
    absent,
    at,
    desired,
    exited,
    kinds,
    make_spec,
    run,
    started,
    timer,
    types_published,
)

LOCAL = {"type": "local", "deadline_s": 100.0}
RESULTS = PublishedResults(
    storage_source="local",
    name=f"{EID}.tar.gz",
    url=f"file:///results/{EID}.tar.gz",
    path=f"/results/{EID}.tar.gz",
    metadata=ResultsMetadata(sha256="ab" * 32, size_bytes=120, files=4),
)


def job(**publisher: Any) -> Any:
    """A batch job (policy never) with a publisher, exited 0 at t=5 while validating."""
    spec = make_spec(policy="never", publisher={**LOCAL, **publisher})
    return run(absent(), (0, desired(1, spec=spec)), (1, started(1)), (5, exited(1, 0)))


def publishes_of(actions: list[Any]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def test_an_exit_that_completes_publishes_first_keeping_the_state_type() -> None:
    r = job()
    e = r.execution
    assert e.state_type == "validating"  # what it was when the workload ended
    assert e.observed.message == "publishing results"
    assert e.observed.details["publishing"] == {"attempts": 0, "last_error": None, "next_attempt_at": None}
    assert e.run_output.exit_code == 0
    [publish] = publishes_of(r.last)
    assert (publish.attempt, publish.try_no, publish.exit_code, publish.job_id) == (1, 1, 0, EID)
    assert e.deadlines == {Timer.PUBLISH_DEADLINE: T0 + 5 + 100}  # validation deadline and window are gone


def test_the_revision_that_completes_carries_published_results() -> None:
    r = job().then((6, Published(1, RESULTS)))
    e = r.execution
    assert types_published(r.last) == ["completed"]
    assert e.observed.message == "exited with exit code 0"
    assert e.published_results == RESULTS
    [doc] = [a.document for a in r.last if hasattr(a, "document")]
    assert doc["published_results"] == RESULTS.model_dump(mode="json")
    assert e.publishing is None
    assert e.deadlines == {}


def test_a_failed_try_is_retried_with_backoff_doubling_to_a_minute() -> None:
    r = job(deadline_s=10_000.0)
    delays = []
    for n in range(1, 10):
        now = r.now
        r = r.then(PublishFailed(n, "connection refused", retryable=True))
        e = r.execution
        details = e.observed.details["publishing"]
        assert details["attempts"] == n
        assert details["last_error"] == "connection refused"
        delays.append(e.deadlines[Timer.PUBLISH_RETRY] - now)
        assert details["next_attempt_at"] == rfc3339(e.deadlines[Timer.PUBLISH_RETRY])
        assert e.state_type == "validating"
        r = r.then((e.deadlines[Timer.PUBLISH_RETRY] - T0, timer(Timer.PUBLISH_RETRY)))
        [again] = publishes_of(r.last)
        assert again.try_no == n + 1
        assert types_published(r.last) == []  # the retry itself publishes no revision
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_the_deadline_fails_it_with_the_last_error_and_keeps_the_exit_code() -> None:
    r = job().then((6, PublishFailed(1, "cannot connect to http://127.0.0.1:9", retryable=True)))
    r = r.then((105, timer(Timer.PUBLISH_DEADLINE)))
    e = r.execution
    assert e.state_type == "failed"
    assert e.observed.message == (
        "publishing results failed: cannot connect to http://127.0.0.1:9; publisher.deadline_s passed"
    )
    assert e.run_output.exit_code == 0
    assert e.deadlines == {}
    assert e.publishing is None


def test_a_final_error_fails_at_once() -> None:
    r = job().then((6, PublishFailed(1, "over the limit", retryable=False)))
    assert r.execution.state_type == "failed"
    assert r.execution.observed.message == "publishing results failed: over the limit"
    assert publishes_of(r.last) == []


def test_a_late_or_stale_report_is_ignored() -> None:
    r = job().then((6, PublishFailed(1, "refused", retryable=True)))
    before = r.execution
    r = r.then(Published(1, RESULTS))  # try 1 already reported
    assert r.execution == before
    r = r.then((8, timer(Timer.PUBLISH_RETRY)), Published(1, RESULTS))
    assert r.execution.state_type == "validating"
    r = r.then(Published(2, RESULTS))
    assert r.execution.state_type == "completed"


def test_a_restart_of_the_agent_resends_the_try_in_flight() -> None:
    r = job().then((30, PublishResumed()))
    [again] = publishes_of(r.last)
    assert again.try_no == 1
    assert types_published(r.last) == []
    # and nothing when no try is in flight
    r = r.then(PublishFailed(1, "refused", retryable=True), PublishResumed())
    assert publishes_of(r.last) == []


def test_a_failure_publishes_only_with_when_always() -> None:
    spec = make_spec(policy="never", publisher=LOCAL)
    r = run(absent(), (0, desired(1, spec=spec)), (1, started(1)), (5, exited(1, 3)))
    assert r.execution.state_type == "failed"
    assert publishes_of(r.actions) == []

    spec = make_spec(policy="never", publisher={**LOCAL, "when": "always"})
    r = run(absent(), (0, desired(1, spec=spec)), (1, started(1)), (5, exited(1, 3)))
    assert r.execution.state_type == "validating"
    assert r.execution.observed.message == "publishing results"
    r = r.then((6, Published(1, RESULTS)))
    assert r.execution.state_type == "failed"
    assert r.execution.observed.message == "exited with exit code 3"
    assert r.execution.published_results == RESULTS
    assert r.execution.run_output.exit_code == 3


def test_a_timeout_with_when_always_publishes_after_the_stop() -> None:
    spec = make_spec(policy="never", timeout_s=3.0, publisher={**LOCAL, "when": "always"})
    r = run(absent(), (0, desired(1, spec=spec)), (1, started(1)), (4, timer("timeout")), (5, exited(1, 143)))
    e = r.execution
    assert e.state_type == "stopping"
    assert e.observed.message == "publishing results"
    r = r.then((6, Published(1, RESULTS)))
    assert r.execution.observed.message == "timed out: ran longer than timeout_s"
    assert r.execution.state_type == "failed"


def test_without_a_publisher_nothing_changes() -> None:
    r = at("completed")
    assert r.execution.published_results is None
    assert publishes_of(r.actions) == []
    assert r.execution.observed.details == {}


def test_a_stop_while_publishing_abandons_it() -> None:
    r = job().then((6, desired(2, "stopped", spec=make_spec(policy="never", publisher=LOCAL))))
    e = r.execution
    assert e.state_type == "stopped"
    assert e.observed.message == "stopped by request; results not published"
    assert e.publishing is None
    assert Timer.PUBLISH_DEADLINE not in e.deadlines
    assert r.then(Published(1, RESULTS)).execution == e  # the try in flight reports too late


def test_deleting_while_publishing_forgets_it_with_its_job() -> None:
    r = job().then((6, DesiredDeleted()))
    assert kinds(r.last) == ["ClearStatus", "Forget"]
    assert r.last[-1] == Forget(EID, EID)


def test_a_stored_execution_from_before_results_still_loads() -> None:
    stored = at("running").execution.model_dump(mode="json")
    del stored["published_results"], stored["publishing"]
    assert Execution.model_validate(stored).published_results is None


def test_timeout_at_is_in_the_details_while_timeout_s_counts() -> None:
    spec = make_spec(timeout_s=100.0)
    r = run(absent(), (0, desired(1, spec=spec)), (1, started(1)))
    [*_, doc] = [a.document for a in r.actions if hasattr(a, "document") and "revision" in a.document]
    assert doc["details"]["timeout_at"] == rfc3339(T0 + 101)
    r = r.then((5, exited(1, 0)))
    assert "timeout_at" not in r.execution.model_dump()["details"]

"""Publishing results (docs/protocol.md, Results): when it starts, each try, and how it ends.

When the workload ends in a way the publisher wants (``completed``; with ``when: always`` also
``failed``), the execution keeps its observed state type with the message ``publishing results`` and
``details.publishing``, and a :class:`Publish` action goes out. Each failed try is retried after a backoff
of 1 s doubling to 60 s, until ``deadline_s`` after the workload ended; then the execution lands in
``failed`` with the reason. The revision that makes it ``completed`` (or ``failed``) carries
``published_results``. The outcome it waited for (``reason``, ``run_output.exit_code``) is the workload's.
"""

from __future__ import annotations

from typing import Literal

from agent.core.actions import Publish
from agent.core.model import Publishing
from agent.core.step import Step
from agent.core.timers import Timer
from agent.protocol import PUBLISHING_MESSAGE, rfc3339

MESSAGE = PUBLISHING_MESSAGE
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def wanted(step: Step, outcome: Literal["completed", "failed"]) -> bool:
    """Whether a workload that ended in ``outcome`` has results to publish first."""
    spec = step.state.spec
    if spec is None or spec.publisher is None:
        return False
    return outcome == "completed" or spec.publisher.when == "always"


def begin(step: Step, outcome: Literal["completed", "failed"], reason: str) -> None:
    """The workload has ended for good: publish its results before landing in ``outcome``."""
    state = step.state
    assert state.spec is not None
    assert state.spec.publisher is not None
    publishing = Publishing(
        attempt=state.attempt,
        exit_code=state.run_output.exit_code,
        outcome=outcome,
        reason=reason,
        ended_at=step.now.wall,
    )
    step.set(publishing=publishing)
    step.set_timer(Timer.PUBLISH_DEADLINE, state.spec.publisher.deadline_s)
    _observe(step)
    _try(step)


def retry(step: Step) -> None:
    """The backoff after a failed try has passed: try again."""
    publishing = step.state.publishing
    assert publishing is not None
    step.set(publishing=publishing.replace(tries=publishing.tries + 1, in_flight=True))
    _try(step)


def resume(step: Step) -> None:
    """The agent restarted with a try in flight: send the same try again (publishing is idempotent)."""
    publishing = step.state.publishing
    if publishing is not None and publishing.in_flight:
        _try(step)


def failed_try(step: Step, error: str) -> None:
    """A try failed and may be retried: wait, then try again (the deadline timer ends it if need be)."""
    publishing = step.state.publishing
    assert publishing is not None
    delay = min(RETRY_FIRST_S * 2**publishing.failures, RETRY_MAX_S)
    step.set(
        publishing=publishing.replace(
            in_flight=False,
            failures=publishing.failures + 1,
            last_error=error,
            next_try_at=step.now.wall + delay,
        )
    )
    step.set_timer(Timer.PUBLISH_RETRY, delay)
    _observe(step)


def abandon(step: Step) -> None:
    """Stop publishing (the execution is stopped or deleted): a try in flight is ignored when it reports."""
    step.set(publishing=None)


def _try(step: Step) -> None:
    state = step.state
    publishing = state.publishing
    assert publishing is not None
    assert state.spec is not None
    assert state.spec.publisher is not None
    step.actions.append(
        Publish(
            execution_id=state.execution_id,
            job_id=state.job_id,
            attempt=publishing.attempt,
            exit_code=publishing.exit_code,
            publisher=state.spec.publisher,
            try_no=publishing.tries,
        )
    )


def _observe(step: Step) -> None:
    """Keep the observed state type; say what publishing is doing (a revision when that changes)."""
    publishing = step.state.publishing
    assert publishing is not None
    next_at = rfc3339(publishing.next_try_at)
    details = {
        "attempts": publishing.failures,
        "last_error": publishing.last_error,
        "next_attempt_at": next_at,
    }
    step.observe(step.state.observed.state_type, MESSAGE, publishing=details)

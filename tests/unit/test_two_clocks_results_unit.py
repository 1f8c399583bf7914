"""Main's results and job timeout on the two clocks: timers on the boot clock, published times on the wall."""

from __future__ import annotations

from datetime import datetime

import pytest

from agent.core.clock import Now
from agent.core.events import PublishFailed
from agent.core.lifecycle import decide
from agent.core.model import Execution
from agent.core.reboot import after_reboot
from agent.core.status import status_document
from agent.core.timers import Timer
from tests.unit.test_lifecycle import T0, absent, desired, exited, make_spec, started

BOOT = 500.0  # 1.7e9 s from the wall clock: a mix-up of the two would be off by decades


def at(offset: float) -> Now:
    return Now(wall=T0 + offset, boot=BOOT + offset)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_timeout_at_is_published_on_the_wall_clock() -> None:
    state, _ = decide(absent(), desired(1, spec=make_spec(timeout_s=60.0)), at(0))
    state, _ = decide(state, started(1), at(1))
    assert isinstance(state, Execution)
    assert state.deadlines[Timer.TIMEOUT] == BOOT + 1 + 60.0
    timeout_at = status_document(state)["details"]["timeout_at"]
    assert epoch(timeout_at) == pytest.approx(T0 + 1 + 60.0)


def publishing_job() -> Execution:
    spec = make_spec(policy="never", publisher={"type": "local", "deadline_s": 100.0})
    state, _ = decide(absent(), desired(1, spec=spec), at(0))
    state, _ = decide(state, started(1), at(1))
    state, _ = decide(state, exited(1, 0), at(5))
    state, _ = decide(state, PublishFailed(1, "connection refused", retryable=True), at(6))
    assert isinstance(state, Execution)
    return state


def test_a_retry_is_timed_on_the_boot_clock_and_its_next_attempt_published_on_the_wall_clock() -> None:
    state = publishing_job()
    assert state.deadlines[Timer.PUBLISH_DEADLINE] == BOOT + 5 + 100.0
    assert state.deadlines[Timer.PUBLISH_RETRY] == BOOT + 6 + 1.0
    next_at = state.observed.details["publishing"]["next_attempt_at"]
    assert epoch(next_at) == pytest.approx(T0 + 6 + 1.0)


def test_after_a_reboot_a_retry_is_due_at_once_and_the_deadline_counts_on_from_the_end() -> None:
    state = publishing_job()
    rebooted = Now(wall=T0 + 30, boot=2.0)  # 24 s after the failed try, 2 s into a new boot
    after = after_reboot(state, rebooted)
    assert after.deadlines[Timer.PUBLISH_RETRY] == 0.0
    assert after.deadlines[Timer.PUBLISH_DEADLINE] == pytest.approx(2.0 + 75.0)
    assert after_reboot(state, Now(wall=T0 + 500, boot=2.0)).deadlines[Timer.PUBLISH_DEADLINE] == 2.0

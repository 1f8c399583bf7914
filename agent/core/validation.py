"""Validation windows and probes: when a run becomes stable, and when a stable one is degraded.

During the window the probe (if any) must pass on every check: the window runs from the first pass of an
unbroken streak, and a failed check starts it again at the next pass. Once stable, ``failure_threshold``
failures in a row make the execution ``degraded``, and the next pass makes it ``running`` again.
"""

from __future__ import annotations

from agent.core.events import SuccessorStable
from agent.core.step import Step
from agent.core.timers import Timer


def window_passed(step: Step) -> None:
    state = step.state
    assert state.spec is not None
    if not (state.in_window and state.process is not None and state.state_type in ("validating", "degraded")):
        return
    if state.spec.probe is not None and not state.probe_passing:
        return
    first = state.stable_at is None
    step.clear_timers(Timer.DEADLINE, Timer.WINDOW)
    step.set(in_window=False, stable_at=state.stable_at if not first else step.now.wall, recent_restarts=0)
    step.observe("running", "stable")
    previous = state.previous_execution_id
    if first and previous is not None and state.spec.update_strategy == "start_first":
        step.tell(previous, SuccessorStable(state.execution_id))


def on_probe(step: Step, ok: bool, detail: str) -> None:
    state = step.state
    assert state.spec is not None
    probe = state.spec.probe
    if (
        probe is None
        or state.process is None
        or state.state_type not in ("validating", "running", "degraded")
    ):
        return
    if state.in_window:
        if ok and not state.probe_passing:
            step.set(probe_passing=True, probe_failures=0)
            step.set_timer(Timer.WINDOW, state.spec.validation.window_s)
            if state.spec.validation.window_s == 0:
                window_passed(step)
        elif not ok:
            step.set(probe_passing=False, probe_failures=state.probe_failures + 1)
            step.clear_timers(Timer.WINDOW)  # every check must pass for the whole window: start it again
        return
    if ok:
        step.set(probe_passing=True, probe_failures=0)
        if state.state_type == "degraded":
            step.observe("running", "probe passing again")
        return
    failures = state.probe_failures + 1
    step.set(probe_passing=False, probe_failures=failures)
    if failures >= probe.failure_threshold and state.state_type == "running":
        step.observe("degraded", f"probe failed {failures} times in a row: {detail}")

"""Validation windows and probes: when a run becomes stable, and when a stable one is degraded.

During the window the probe (if any) must pass on every check: the window runs from the first pass of an
unbroken streak, and a failed check starts it again at the next pass. Once stable, ``failure_threshold``
failures in a row make the execution ``degraded``, and the next pass makes it ``running`` again.
"""

from __future__ import annotations

from agent.core.events import SuccessorStable
from agent.core.model import Execution
from agent.core.step import Step
from agent.core.timers import Timer
from agent.protocol import ObservedStateType, Probe


def window_passed(step: Step) -> None:
    state = step.state
    assert state.spec is not None
    if not (state.in_window and state.process is not None and state.state_type in ("validating", "degraded")):
        return
    if state.spec.probe is not None and not state.probe_passing:
        return
    first = not state.ever_stable
    step.set(in_window=False, stable_at=step.now.wall if first else state.stable_at, recent_restarts=0)
    step.observe("running", "stable")
    previous = state.previous_execution_id
    if first and previous is not None and state.spec.update_strategy == "start_first":
        step.tell(previous, SuccessorStable(state.execution_id))


# The states whose workload is probed: from the start of its validation for as long as it runs.
PROBED_STATES: frozenset[ObservedStateType] = frozenset({"validating", "running", "degraded"})


def probed(state: Execution) -> tuple[int, Probe] | None:
    """The attempt and probe to check for ``state``, if its workload runs in a probed state with a probe.

    The prober (agent/probes.py) runs the checks of exactly these; :func:`on_probe` heeds only their reports.
    """
    if state.state_type not in PROBED_STATES or state.process is None or state.spec is None:
        return None
    probe = state.spec.probe
    return None if probe is None else (state.process.attempt, probe)


def on_probe(step: Step, ok: bool, detail: str) -> None:
    state = step.state
    checked = probed(state)
    if checked is None:
        return
    _, probe = checked
    assert state.spec is not None
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

"""The core's side of containment: what a contained workload's end says, and when usage is published.

Pure: usage samples are put into the state as the runtime does before each decision (Execution.usage).
"""

from __future__ import annotations

from agent.core.actions import PublishStatus
from agent.core.clock import Now
from agent.core.events import ProcessExited, ProcessStarted, TimerFired
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, ProcessRef, Usage
from agent.core.timers import USAGE_REFRESH_S, Timer
from tests.unit.test_lifecycle import EID, NODE, T0, desired, make_spec

CGROUP = "/sys/fs/cgroup/reconcile-agent/workloads-x/web-2-1"
BOOT = 500.0  # 1.7e9 s from the wall clock: a mix-up of the two would be off by decades


def at(offset: float) -> Now:
    return Now(wall=T0 + offset, boot=BOOT + offset)


def contained_ref() -> ProcessRef:
    return ProcessRef(
        attempt=1, pid=1001, started=T0, supervisor_pid=901, supervisor_started=T0, cgroup=CGROUP
    )


def sampled(state: Execution, cpu: float, wall: float, processes: int = 2) -> Execution:
    return state.model_copy(
        update={"usage": Usage(cpu_seconds=cpu, processes=processes, memory_bytes=None, at=wall)}
    )


def running(window_s: float = 10.0, **spec: object) -> Execution:
    """Desired running, spawned, started with a first usage sample; returns the state."""
    state, _ = decide(
        Absent(execution_id=EID, node_id=NODE), desired(1, spec=make_spec(window_s=window_s, **spec)), at(0)
    )
    assert isinstance(state, Execution)
    state, _ = decide(sampled(state, 0.01, T0 + 1), ProcessStarted(contained_ref()), at(1))
    assert isinstance(state, Execution)
    return state


def published(actions: list[object]) -> list[PublishStatus]:
    return [a for a in actions if isinstance(a, PublishStatus)]


def test_a_state_change_publishes_the_latest_sample() -> None:
    state = running()
    assert state.details["usage"] == {
        "cpu_seconds": 0.01,
        "processes": 2,
        "memory_bytes": None,
        "at": "2027-01-15T08:00:01.000000Z",
    }


def test_a_sample_alone_makes_no_revision() -> None:
    state = running()
    later = sampled(state, 5.0, T0 + 20)
    # A stale report (another attempt): nothing changes but the sample.
    new, actions = decide(later, ProcessExited(attempt=9, exit_code=0), at(20))
    assert published(actions) == []
    assert new.revision == state.revision


def test_usage_alone_is_republished_a_minute_after_the_last_revision_that_carried_it() -> None:
    state = running(window_s=1000.0)
    # A deadline on the boot clock; the sample's time is on the wall clock.
    assert state.deadlines[Timer.USAGE] == BOOT + 1 + USAGE_REFRESH_S
    due = sampled(state, 7.5, T0 + 1 + USAGE_REFRESH_S)
    new, actions = decide(due, TimerFired(Timer.USAGE), at(1 + USAGE_REFRESH_S))
    assert isinstance(new, Execution)
    [status] = published(actions)
    assert status.revision == state.revision + 1
    assert status.document["details"]["usage"]["cpu_seconds"] == 7.5
    assert new.deadlines[Timer.USAGE] == state.deadlines[Timer.USAGE] + USAGE_REFRESH_S


def test_the_end_carries_the_last_usage_and_stops_the_usage_timer() -> None:
    state = running()
    final = Usage(cpu_seconds=3.0, processes=0, memory_bytes=None, at=T0 + 30)
    new, _ = decide(state, ProcessExited(1, 0, usage=final), at(30))
    assert isinstance(new, Execution)
    assert new.details["usage"]["processes"] == 0
    assert new.details["usage"]["cpu_seconds"] == 3.0
    assert Timer.USAGE not in new.deadlines


def test_leftovers_killed_after_the_main_process_exited_are_in_the_message() -> None:
    new, _ = decide(running(policy="never"), ProcessExited(1, 3, leftovers=2), at(5))
    assert isinstance(new, Execution)
    assert new.observed.state_type == "failed"
    assert (
        new.observed.message
        == "exited with exit code 3; 2 processes left after the main process exited, killed"
    )


def test_a_workload_whose_supervisor_died_is_lost_and_its_killed_processes_said() -> None:
    new, _ = decide(running(policy="never"), ProcessExited(1, None, leftovers=1), at(5))
    assert isinstance(new, Execution)
    assert new.observed.state_type == "lost"
    assert new.observed.message.endswith("; its supervisor was gone; 1 process left running, killed")


def test_an_oom_kill_fails_the_workload_saying_so_not_as_a_plain_signal_death() -> None:
    new, _ = decide(running(policy="never"), ProcessExited(1, 137, oom_kills=1), at(5))
    assert isinstance(new, Execution)
    assert new.observed.state_type == "failed"
    assert new.observed.message.startswith("killed by the OOM killer: over its memory limit")


def test_an_oom_kill_of_a_child_is_noted_on_an_otherwise_clean_exit() -> None:
    new, _ = decide(running(policy="never"), ProcessExited(1, 0, oom_kills=1), at(5))
    assert isinstance(new, Execution)
    assert new.observed.state_type == "completed"
    assert new.observed.message == "exited with exit code 0; the OOM killer killed 1 process of it"

"""The timers of an execution, and where each may be armed.

A timer is a deadline kept in Execution.deadlines, name -> boot-clock time (core/clock.py). The names are a
StrEnum, so the stored and published form is the plain name and a misspelt timer fails the type check.

Which timers may be armed is declared here, once: :data:`ARMED_IN` for each observed state, and
:data:`ONLY_WHILE` for what a timer watches besides. As the state changes, every timer it no longer allows
is dropped in one place, just before a status is published (Step.publish, through
Execution.armable()), so no rule clears timers by hand for the state it moves to; the hypothesis machine
(tests/unit/test_lifecycle_machine.py) checks after every decision that no other timer is armed.
"""

from collections.abc import Mapping
from enum import StrEnum

from agent.protocol import ObservedStateType


class Timer(StrEnum):
    WINDOW = "window"  # validation window: the run has stayed up (and healthy) long enough to be stable
    DEADLINE = "deadline"  # validation deadline: it did not become stable in time
    GRACE = "grace"  # stop grace: time to escalate to SIGKILL
    RESTART = "restart"  # restart backoff: time for the next attempt
    TIMEOUT = "timeout"  # spec.timeout_s: the run has gone on too long, counted from its first start
    PUBLISH_RETRY = "publish_retry"  # results: time for the next try after a failed one
    PUBLISH_DEADLINE = "publish_deadline"  # results: publisher.deadline_s after the workload ended
    USAGE = "usage"  # details.usage is this old: publish a fresh sample even though nothing else changed


USAGE_REFRESH_S = 60.0

_PUBLISHING = frozenset({Timer.PUBLISH_RETRY, Timer.PUBLISH_DEADLINE})

# Publishing results keeps the observed state the workload ended in (core/publish.py), so every state a
# workload can end in may hold the publishing timers.
ARMED_IN: Mapping[ObservedStateType, frozenset[Timer]] = {
    "pending": frozenset(),
    # Waiting for a restart (never stable), or spawning; the run's deadline and timeout go on.
    "starting": frozenset({Timer.RESTART, Timer.DEADLINE, Timer.TIMEOUT}) | _PUBLISHING,
    "validating": frozenset({Timer.WINDOW, Timer.DEADLINE, Timer.TIMEOUT, Timer.USAGE}) | _PUBLISHING,
    "running": frozenset({Timer.TIMEOUT, Timer.USAGE}) | _PUBLISHING,
    # A stable execution waiting for its restart, or re-validating after it.
    "degraded": frozenset({Timer.WINDOW, Timer.RESTART, Timer.TIMEOUT, Timer.USAGE}) | _PUBLISHING,
    "stopping": frozenset({Timer.GRACE, Timer.USAGE}) | _PUBLISHING,
    "stopped": frozenset(),
    "completed": frozenset(),
    "failed": frozenset(),
    # lost is published as its own revision on its way to a restart, which keeps the run's deadline and
    # timeout; when nothing restarts it, on_gone (core/moves.py) ends them.
    "lost": frozenset({Timer.DEADLINE, Timer.TIMEOUT}),
}


class While(StrEnum):
    """What else a timer needs of the execution to stay armed."""

    WORKLOAD = "a workload of it runs"  # it watches the workload: gone the moment the workload ends
    IDLE = "nothing runs or is being spawned"
    NEVER_STABLE = "it was never stable"
    RUN = "the run goes on: no results are being published"
    PUBLISHING = "its results are being published"


ONLY_WHILE: Mapping[Timer, frozenset[While]] = {
    Timer.WINDOW: frozenset({While.WORKLOAD}),
    Timer.DEADLINE: frozenset({While.NEVER_STABLE, While.RUN}),
    Timer.GRACE: frozenset({While.WORKLOAD}),
    Timer.RESTART: frozenset({While.IDLE, While.RUN}),
    Timer.TIMEOUT: frozenset({While.RUN}),
    Timer.PUBLISH_RETRY: frozenset({While.PUBLISHING}),
    Timer.PUBLISH_DEADLINE: frozenset({While.PUBLISHING}),
    Timer.USAGE: frozenset({While.WORKLOAD}),
}

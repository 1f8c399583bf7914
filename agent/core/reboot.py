"""What an execution keeps when the machine has rebooted since its state was stored.

Its deadlines are on the old boot's clock, so they mean nothing now, and nothing they timed is still
running: workloads die with the boot, and their ends are reported from the supervisors' exit files as
after any stop of the agent. A pending restart is the one timer that starts something rather than
watches it: it becomes due at once (the backoff it was waiting out has passed with the reboot). The
validation deadline and the run's timeout are set again when the next attempt starts.

Publishing results is the agent's own work, not the workload's, so it goes on after a reboot: a pending
retry is due at once (like a restart), and ``publisher.deadline_s`` keeps counting from when the workload
ended. That moment is only known on the wall clock (the one clock that spans boots), so the deadline is
set again from it, never earlier than now.
"""

from __future__ import annotations

from agent.core.clock import Now
from agent.core.model import Execution
from agent.core.timers import Timer


def after_reboot(state: Execution, now: Now) -> Execution:
    deadlines: dict[Timer, float] = {
        name: 0.0 for name in (Timer.RESTART, Timer.PUBLISH_RETRY) if name in state.deadlines
    }
    publishing = state.publishing
    publisher = None if state.spec is None else state.spec.publisher
    if publishing is not None and publisher is not None and Timer.PUBLISH_DEADLINE in state.deadlines:
        left = publishing.ended_at + publisher.deadline_s - now.wall
        deadlines[Timer.PUBLISH_DEADLINE] = now.boot + max(left, 0.0)
    return state.replace(deadlines=deadlines)

"""What an execution keeps when the machine has rebooted since its state was stored.

Its deadlines are on the old boot's clock, so they mean nothing now, and nothing they timed is still
running: workloads die with the boot, and their ends are reported from the supervisors' exit files as
after any stop of the agent. A pending restart is the one timer that starts something rather than
watches it: it becomes due at once (the backoff it was waiting out has passed with the reboot). The
validation deadline and the run's timeout are set again when the next attempt starts.
"""

from __future__ import annotations

from agent.core.model import Execution
from agent.core.step import RESTART


def after_reboot(state: Execution) -> Execution:
    deadlines = {RESTART: 0.0} if RESTART in state.deadlines else {}
    return state.model_copy(update={"deadlines": deadlines})

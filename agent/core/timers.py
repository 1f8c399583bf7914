"""Timer names, kept in Execution.deadlines as name -> boot-clock deadline (core/clock.py).

A StrEnum, so the stored and published form is the plain name and a misspelt timer fails the type check.
"""

from enum import StrEnum


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

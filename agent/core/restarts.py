"""Restart policy and backoff: whether an attempt that ended is restarted, after how long, and why (not).

One pure verdict with a named reason, as Nomad's client/allocrunner/taskrunner/restarts gives its task
runner; the lifecycle (moves.py) acts on it: it schedules the restart, or settles the execution with a
message that follows from the reason. The rules (docs/protocol.md, Lifecycle): ``never`` restarts
nothing, ``on-failure`` a non-zero exit, a spawn failure or a lost workload, ``always`` any exit;
``max_restarts`` limits the restarts since the last run that passed its validation window, and the
delay before restart n (from 0) is ``min(backoff_s * 2^n, backoff_max_s)``. Once the validation deadline
has passed, nothing is restarted: the execution failed validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.protocol import RestartPolicy


class Reason(StrEnum):
    WITHIN_POLICY = "restart within policy"
    VALIDATION_OVER = "validation.deadline_s has passed"
    NOT_WANTED = "the policy does not restart this exit"
    EXHAUSTED = "restarts exhausted"  # max_restarts since the last stable run


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    delay_s: float = 0.0  # before the next attempt, when it is restarted

    @property
    def restart(self) -> bool:
        return self.reason is Reason.WITHIN_POLICY


def wanted(policy: RestartPolicy, exit_code: int | None) -> bool:
    """Whether the policy restarts an attempt that ended with ``exit_code`` (None: no exit status)."""
    return policy.policy == "always" or (policy.policy == "on-failure" and exit_code != 0)


def backoff_s(policy: RestartPolicy, recent_restarts: int) -> float:
    doubled: int = 2**recent_restarts
    return min(policy.backoff_s * doubled, policy.backoff_max_s)


def verdict(
    policy: RestartPolicy, exit_code: int | None, recent_restarts: int, validation_over: bool
) -> Verdict:
    """What becomes of an attempt that ended; ``recent_restarts`` counts those since the last stable run."""
    if validation_over:
        return Verdict(Reason.VALIDATION_OVER)
    if not wanted(policy, exit_code):
        return Verdict(Reason.NOT_WANTED)
    if recent_restarts >= policy.max_restarts:
        return Verdict(Reason.EXHAUSTED)
    return Verdict(Reason.WITHIN_POLICY, backoff_s(policy, recent_restarts))

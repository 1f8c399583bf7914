"""What can happen to an execution: the inputs of :func:`agent.core.lifecycle.decide`."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.model import ProcessRef, Usage
from agent.core.timers import Timer
from agent.protocol import DesiredDocument, PublishedResults, UpdateStrategy


@dataclass(frozen=True)
class DesiredReceived:
    document: DesiredDocument
    digest: str


@dataclass(frozen=True)
class DesiredRejected:
    generation: int | None
    reason: str
    digest: str


@dataclass(frozen=True)
class DesiredDeleted:
    pass


@dataclass(frozen=True)
class DesiredMissing:
    """A snapshot of the retained desired documents proved this execution's absent (agent/resync.py)."""


@dataclass(frozen=True)
class ProcessStarted:
    ref: ProcessRef
    usage: Usage | None = None  # its cgroup's, sampled as it started (the decision publishes it)


@dataclass(frozen=True)
class SpawnFailed:
    attempt: int
    error: str


@dataclass(frozen=True)
class SpawnLost:
    """The agent stopped before a spawn reported back, and no workload of that attempt was found."""

    attempt: int


@dataclass(frozen=True)
class Tail:
    """The last bytes of a log stream, decoded, and whether anything before them was cut."""

    text: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ProcessExited:
    """The workload of ``attempt`` is gone; ``exit_code`` None means nobody recorded how it ended.

    With a cgroup, every process of it is gone: ``leftovers`` were still there when the main process
    had ended (killed, unless a stop was under way), ``oom_kills`` the OOM killer's victims in it, and
    ``usage`` what it used in all.
    """

    attempt: int
    exit_code: int | None
    stdout: Tail = Tail()
    stderr: Tail = Tail()
    leftovers: int = 0
    oom_kills: int = 0
    usage: Usage | None = None


@dataclass(frozen=True)
class TimerFired:
    name: Timer


@dataclass(frozen=True)
class ProbeResult:
    attempt: int
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Published:
    """Try ``try_no`` of publishing the results succeeded: they are at ``results``."""

    try_no: int
    results: PublishedResults


@dataclass(frozen=True)
class PublishFailed:
    """Try ``try_no`` failed; ``retryable`` False when trying again cannot help (over the size cap, say)."""

    try_no: int
    error: str
    retryable: bool


@dataclass(frozen=True)
class PublishResumed:
    """The agent restarted while a publish was in flight: it has no outcome for it, so try again."""


# --- Between executions (updates and rollback), carried by the runtime's durable mailbox -------------


@dataclass(frozen=True)
class HandOver:
    """To P: ``successor`` replaces you, with this update strategy."""

    successor: str
    strategy: UpdateStrategy


@dataclass(frozen=True)
class Released:
    """To N: ``previous`` has stopped (or is not known here, or does not run): N may start."""

    previous: str
    known: bool


@dataclass(frozen=True)
class SuccessorStable:
    """To P (start_first): ``successor`` is stable, so P stops now."""

    successor: str


@dataclass(frozen=True)
class RollbackFrom:
    """To P: ``successor`` failed before it was stable; take over again if you can."""

    successor: str


@dataclass(frozen=True)
class RolledBack:
    """To N: ``previous`` took over again after N failed."""

    previous: str


Mail = HandOver | Released | SuccessorStable | RollbackFrom | RolledBack

Event = (
    ProbeResult
    | DesiredMissing
    | HandOver
    | Released
    | SuccessorStable
    | RollbackFrom
    | RolledBack
    | SpawnLost
    | DesiredReceived
    | DesiredRejected
    | DesiredDeleted
    | ProcessStarted
    | SpawnFailed
    | ProcessExited
    | TimerFired
    | Published
    | PublishFailed
    | PublishResumed
)

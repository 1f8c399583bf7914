"""What can happen to an execution: the inputs of :func:`agent.core.lifecycle.decide`."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.model import ProcessRef
from agent.protocol import DesiredDocument


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
class ProcessStarted:
    ref: ProcessRef


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
    """The workload of ``attempt`` is gone; ``exit_code`` None means nobody recorded how it ended."""

    attempt: int
    exit_code: int | None
    stdout: Tail = Tail()
    stderr: Tail = Tail()


@dataclass(frozen=True)
class TimerFired:
    name: str


Event = (
    SpawnLost
    | DesiredReceived
    | DesiredRejected
    | DesiredDeleted
    | ProcessStarted
    | SpawnFailed
    | ProcessExited
    | TimerFired
)

"""What the lifecycle asks the edges to do. Each action is data; the runtime applies it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.core.events import Mail
from agent.core.model import ProcessRef
from agent.protocol import LocalPublisher, S3Publisher, Spec


@dataclass(frozen=True)
class Spawn:
    execution_id: str
    attempt: int
    spec: Spec


@dataclass(frozen=True)
class Signal:
    """Send ``signal`` (a name such as "SIGTERM") to the workload's whole process group."""

    execution_id: str
    ref: ProcessRef
    signal: str


@dataclass(frozen=True)
class PublishStatus:
    execution_id: str
    revision: int
    document: dict[str, Any]


@dataclass(frozen=True)
class ClearStatus:
    """Publish the empty retained payload that removes the execution's status topic."""

    execution_id: str


@dataclass(frozen=True)
class EmitEvent:
    document: dict[str, Any]


@dataclass(frozen=True)
class Forget:
    """Drop the execution from the store, keeping its revision high-water mark, and remove its files
    (its run directory, output directories and a local results archive; never an S3 object)."""

    execution_id: str
    job_id: str


@dataclass(frozen=True)
class Publish:
    """Pack the output of ``attempt`` with its logs and exit code, and publish the archive.

    Idempotent: the same execution packs to the same bytes under the same name every time, so a try
    repeated after a crash publishes the same archive again. The outcome comes back as a
    :class:`agent.core.events.Published` or :class:`agent.core.events.PublishFailed` for ``try_no``.
    """

    execution_id: str
    job_id: str
    attempt: int
    exit_code: int | None
    publisher: LocalPublisher | S3Publisher
    try_no: int


@dataclass(frozen=True)
class Tell:
    """Deliver ``event`` to another execution, durably and in order (the runtime's mailbox)."""

    execution_id: str
    event: Mail


Action = Spawn | Signal | PublishStatus | ClearStatus | EmitEvent | Forget | Tell | Publish

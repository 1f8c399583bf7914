"""What the lifecycle asks the edges to do. Each action is data; the runtime applies it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.core.events import Mail
from agent.core.model import ProcessRef
from agent.protocol import Spec


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
    """Drop the execution from the store, keeping its revision high-water mark, and remove its files."""

    execution_id: str


@dataclass(frozen=True)
class Tell:
    """Deliver ``event`` to another execution, durably and in order (the runtime's mailbox)."""

    execution_id: str
    event: Mail


Action = Spawn | Signal | PublishStatus | ClearStatus | EmitEvent | Forget | Tell

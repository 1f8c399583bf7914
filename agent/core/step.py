"""One decision in the making: state changes, a revision per published change, and the actions."""

from __future__ import annotations

from typing import Any, Unpack

from agent.core.actions import Action, EmitEvent, PublishStatus, Tell
from agent.core.clock import Now
from agent.core.events import Mail
from agent.core.model import Absent, Execution, ExecutionFields
from agent.core.status import (
    ExecutionEventType,
    event_document,
    status_document,
    status_view,
    usage_document,
    view_of,
)
from agent.core.timers import USAGE_REFRESH_S, Timer
from agent.protocol import ObservedState, ObservedStateType, rfc3339

Decision = tuple[Execution | Absent, list[Action]]


class Step:
    def __init__(self, state: Execution, now: Now, published: Execution | None) -> None:
        self.state = state
        self.now = now
        self.actions: list[Action] = []
        # The status last published, rendered only when something is to be published: most events
        # (a passing probe, a stale report) publish nothing, and rendering is most of a decision's cost.
        self._published_state = published
        self._published: dict[str, Any] | None = None

    @classmethod
    def of(cls, state: Execution, now: Now) -> Step:
        return cls(state, now, state)

    def set(self, **fields: Unpack[ExecutionFields]) -> None:
        """Change fields of the state; their names and types are checked by the type checker."""
        self.state = self.state.replace(**fields)

    def observe(self, state_type: ObservedStateType, message: str = "", **details: Any) -> None:
        """Move to an observed state (its details replace the old ones) and publish it as its own revision."""
        self.set(observed=ObservedState(state_type=state_type, message=message, details=details))
        self.publish()

    def publish(self) -> None:
        """Publish the status if it differs from the last one published; identical statuses are dropped."""
        if self.state is self._published_state:
            return  # nothing changed at all since it was published
        self._drop_timers()
        if self._published is None and self._published_state is not None:
            self._published = status_view(self._published_state)
        if status_view(self.state) == self._published:
            return
        self.refresh_usage()
        self.set(revision=self.state.revision + 1, updated_at=self.now.wall)
        document = status_document(self.state)
        self._published_state, self._published = self.state, view_of(document)
        self.actions.append(PublishStatus(self.state.execution_id, self.state.revision, document))

    def refresh_usage(self) -> None:
        """Put the latest usage sample in details.usage: every revision carries a fresh one, and while
        the workload runs a revision for the usage alone is due USAGE_REFRESH_S after the last."""
        usage = self.state.usage
        if usage is None:
            return
        self.set_detail("usage", usage_document(usage))
        if self.state.process is not None:
            self.set_timer(Timer.USAGE, USAGE_REFRESH_S)

    def emit(self, event_type: ExecutionEventType, **fields: Any) -> None:
        s = self.state
        self.actions.append(
            EmitEvent(event_document(event_type, s.node_id, s.execution_id, self.now.wall, **fields))
        )

    def tell(self, execution_id: str, mail: Mail) -> None:
        self.actions.append(Tell(execution_id, mail))

    def set_detail(self, key: str, value: Any) -> None:
        details = {k: v for k, v in self.state.details.items() if k != key}
        if value is not None:
            details[key] = value
        self.set(details=details)

    def _drop_timers(self) -> None:
        """Drop every timer the state no longer allows (agent/core/timers.py): the one place they go as the
        state changes. Before the status is rendered, as ``details.timeout_at`` shows the timeout timer."""
        state = self.state
        if not all(state.allows(timer) for timer in state.deadlines):
            self.set(deadlines={k: v for k, v in state.deadlines.items() if state.allows(k)})

    def set_timer(self, name: Timer, delay_s: float) -> None:
        self.set(deadlines={**self.state.deadlines, name: self.now.boot + delay_s})

    def clear_timers(self, *names: Timer) -> None:
        """End timers the state goes on allowing (one fired, the window starts again, the run is over);
        the timers a new state does not allow are dropped by :meth:`publish`, not here."""
        self.set(deadlines={k: v for k, v in self.state.deadlines.items() if k not in names})

    def due(self, name: Timer) -> bool | None:
        """Whether timer ``name`` has come due; None if it is not set."""
        deadline = self.state.deadlines.get(name)
        return None if deadline is None else deadline <= self.now.boot

    def at(self) -> str:
        return rfc3339(self.now.wall) or ""

    def when(self, name: Timer) -> str:
        """The wall-clock time timer ``name`` will fire at, as published."""
        return rfc3339(self.now.wall_of(self.state.deadlines[name])) or ""

    def done(self) -> Decision:
        self.publish()
        return self.state, self.actions

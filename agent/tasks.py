"""The runtime's background tasks: effects that take time (spawns, watches, probes, publishing), each a
named task of the runtime's TaskGroup.

Owns the guard every such task runs under: one workload's trouble is logged and never takes the agent,
and every other workload, down with it. Knows nothing of what the tasks do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import structlog

log = structlog.get_logger("agent.tasks")


class Tasks:
    def __init__(self, node_id: str) -> None:
        self._group: asyncio.TaskGroup | None = None
        self.log = log.bind(node=node_id)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Tasks may be started while this is entered; leaving it waits for them (or cancels them)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None  # leaving: what reports back late (a spawn's thread) starts nothing

    @property
    def accepting(self) -> bool:
        """Whether :meth:`start` may be called: the runtime runs and is not stopping."""
        return self._group is not None

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._group is not None, "tasks start only while the runtime runs"

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                # One workload's trouble must not take the agent, and every other workload, down with it.
                self.log.exception("background task failed", task=name)

        return self._group.create_task(guarded(), name=name)

"""Prometheus metrics and /healthz (prometheus-client), served on metrics.address when configured.

To be completed (issue #6): this stub is the interface the daemon uses.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.runtime import Decided
from agent.store import Message

if TYPE_CHECKING:
    from agent.daemon import Agent


class Metrics:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def observe_decision(self, decided: Decided) -> None:
        """Called by the runtime after every committed decision."""

    def observe_published(self, messages: list[Message]) -> None:
        """Called by the MQTT link with what the broker just acknowledged."""

    async def serve(self, address: str) -> None:
        """Serve GET /metrics and GET /healthz on host:port until cancelled."""
        await asyncio.Event().wait()

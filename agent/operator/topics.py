"""Topics across the fleet: the agent's ``Topics`` names one node's; the operator reads every node's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ANY = "+"

TopicKind = Literal["execution_status", "desired", "node_status", "events"]


@dataclass(frozen=True)
class Where:
    """What a topic is about: its kind, node and (for execution topics) execution."""

    kind: TopicKind
    node_id: str
    execution_id: str | None = None


@dataclass(frozen=True)
class FleetTopics:
    prefix: str

    def status(self, node_id: str = ANY, execution_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/executions/{execution_id}/status"

    def desired(self, node_id: str, execution_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/executions/{execution_id}/desired"

    def node_status(self, node_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/status"

    def events(self, node_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/events"

    def control(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/control"

    def fence(self, client_id: str) -> str:
        # Outside nodes/ so no agent or orchestrator filter ever matches it.
        return f"{self.prefix}/operators/{client_id}/fence"

    def where(self, topic: str) -> Where | None:
        """Parse one of the fleet's topics, or None for anything else."""
        head = f"{self.prefix}/nodes/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) == 2 and parts[1] in ("status", "events"):
            return Where("node_status" if parts[1] == "status" else "events", parts[0])
        if len(parts) == 4 and parts[1] == "executions" and parts[3] in ("status", "desired"):
            return Where("execution_status" if parts[3] == "status" else "desired", parts[0], parts[2])
        return None

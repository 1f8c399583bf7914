"""Prometheus metrics and the /healthz report (served by agent/metrics_http.py when configured).

Owns the agent's series. Every agent has its own :class:`CollectorRegistry`, so two agents in one
process (the tests) never share a series. What can be read at any moment (executions per observed state,
outbox depth, broker link) is computed at scrape time from :class:`Sources`, a few narrow functions; what
happens (transitions, restarts, rollbacks, rejections, lost workloads) is counted from the runtime's
committed decisions and the node events it queues, and the desired-to-status latency from the decision
time the outbox rows the broker acknowledges carry. It reads nothing else: not the store, the link or the
runtime themselves, no payload, and it serves no HTTP.

See docs/metrics.md for every series, /healthz and the choices made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent import __version__
from agent.core.actions import EmitEvent, PublishStatus
from agent.core.model import Absent, Execution
from agent.outbox import Message
from agent.protocol import OBSERVED_STATES
from agent.runtime import Decision

log = structlog.get_logger("agent.metrics")

PREFIX = "reconcile_agent"
ABSENT = "absent"  # the pseudo-state of an execution the agent does not (or no longer) know
# Seconds from a desired document's decision to the broker's acknowledgement of its first status: a few
# milliseconds normally, up to a broker outage when the status waited in the outbox.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# Event documents (type -> counter attribute) counted when a decision emits them or the node queues them.
_COUNTED_EVENTS = {
    "restart": "restarts",
    "rollback": "rollbacks",
    "desired_rejected": "rejections",
    "lost": "lost",
}


@dataclass(frozen=True)
class Sources:
    """What the metrics read at scrape time: quick calls, on the agent's loop (the store is not
    thread-safe). ``outbox_depth`` may raise: the store does not answer."""

    counts: Callable[[], Mapping[str, int]]  # executions by observed state
    connected: Callable[[], bool]  # the MQTT session to the broker is established
    outbox_depth: Callable[[], int]  # messages stored and not yet acknowledged by the broker
    now: Callable[[], float]  # the wall clock the runtime stamps its decisions with


def _state_of(state: Execution | Absent) -> str:
    return state.state_type if isinstance(state, Execution) else ABSENT


def transitions_of(decided: Decision) -> list[tuple[str, str]]:
    """The observed-state changes one decision made, in order, intermediate states included.

    A decision may pass through several states (``absent -> pending -> starting`` for a new execution),
    each published as its own revision, so the chain is read from its status documents.
    """
    chain = [_state_of(decided.before)]
    for action in decided.actions:
        if isinstance(action, PublishStatus) and action.execution_id == decided.execution_id:
            observed = action.document.get("observed_state")
            if isinstance(observed, dict) and isinstance(observed.get("state_type"), str):
                chain.append(observed["state_type"])
    chain.append(_state_of(decided.after))
    return [(a, b) for a, b in pairwise(chain) if a != b]


class _Live(Collector):
    """What is read at scrape time: executions per state, outbox depth, broker connection."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        sources = self._sources
        executions = GaugeMetricFamily(
            f"{PREFIX}_executions", "Executions known to the agent, by observed state.", labels=["state"]
        )
        counts = sources.counts()
        for state in OBSERVED_STATES:
            executions.add_metric([state], counts.get(state, 0))
        yield executions
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected",
            "1 while the MQTT session to the broker is established, else 0.",
            value=1 if sources.connected() else 0,
        )
        try:
            depth = sources.outbox_depth()
        except Exception as exc:
            log.warning("metrics: cannot read the outbox depth", error=str(exc))
        else:
            yield GaugeMetricFamily(
                f"{PREFIX}_outbox_depth",
                "Messages stored durably and not yet acknowledged by the broker.",
                value=depth,
            )


class Metrics:
    def __init__(self, node_id: str, sources: Sources) -> None:
        self.node_id = node_id
        self.sources = sources
        self.log = log.bind(node=node_id)
        self.registry = CollectorRegistry()
        registry = self.registry
        Info(PREFIX, "The agent: its version and node id (value always 1).", registry=registry).info(
            {"version": __version__, "node": node_id}
        )
        self.transitions = Counter(
            f"{PREFIX}_transitions",
            "Observed-state changes, each published as its own revision; 'absent' is an execution the "
            "agent does not know (new, or deleted).",
            ["from", "to"],
            registry=registry,
        )
        self.restarts = Counter(
            f"{PREFIX}_restarts", "Workload restarts (restart events).", registry=registry
        )
        self.rollbacks = Counter(
            f"{PREFIX}_rollbacks",
            "Automatic rollbacks to a previous execution (rollback events).",
            registry=registry,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections",
            "Rejected desired documents (desired_rejected events), including those on a bad topic.",
            registry=registry,
        )
        self.lost = Counter(
            f"{PREFIX}_lost", "Workloads the agent could not account for (lost events).", registry=registry
        )
        self.desired_to_status = Histogram(
            f"{PREFIX}_desired_to_status_seconds",
            "From the decision on a desired document to the broker acknowledging the first status "
            "revision it produced.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(_Live(sources))
        ProcessCollector(registry=registry)

    # --- counting ----------------------------------------------------------------------------------

    def observe_decision(self, decided: Decision) -> None:
        """Called by the runtime after every committed decision. Never raises."""
        try:
            self._count(decided)
        except Exception:
            self.log.exception("metrics: cannot count a decision", execution=decided.execution_id)

    def _count(self, decided: Decision) -> None:
        for before, after in transitions_of(decided):
            self.transitions.labels(before, after).inc()
        for action in decided.actions:
            if isinstance(action, EmitEvent):
                self._count_event(str(action.document.get("type")))

    def observe_node_event(self, event_type: str) -> None:
        """Called by the runtime with each node event it queued: a rejection of a document on a bad topic
        is one, made outside the lifecycle (no decision). Never raises."""
        try:
            self._count_event(event_type)
        except Exception:
            self.log.exception("metrics: cannot count a node event", type=event_type)

    def _count_event(self, event_type: str) -> None:
        counter = _COUNTED_EVENTS.get(event_type)
        if counter is not None:
            getattr(self, counter).inc()

    def observe_published(self, messages: list[Message]) -> None:
        """Called by the MQTT link with what the broker just acknowledged. Never raises."""
        try:
            for message in messages:
                if message.decided_at is not None:  # the first status of a desired document
                    self.desired_to_status.observe(max(0.0, self.sources.now() - message.decided_at))
        except Exception:
            self.log.exception("metrics: cannot count published messages")

    # --- health ------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 and a short report while the store answers; 503 and the reason when it does not.

        Being answered at all proves the event loop turns: this runs on it.
        """
        report: dict[str, Any] = {
            "status": "ok",
            "node_id": self.node_id,
            "event_loop": "ok",
            "broker_connected": self.sources.connected(),
        }
        try:
            report["outbox_depth"] = self.sources.outbox_depth()
        except Exception as exc:
            report["status"] = "unhealthy"
            report["store"] = f"error: {exc}"
            return 503, report
        report["store"] = "ok"
        return 200, report

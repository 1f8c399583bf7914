"""Prometheus metrics and /healthz, served on ``metrics.address`` when configured (off by default).

Every agent has its own :class:`CollectorRegistry`, so two agents in one process (the tests) never share
a series. What can be read at any moment (executions per observed state, outbox depth, broker link) is
computed at scrape time by a collector; what happens (transitions, restarts, rollbacks, rejections, lost
workloads, desired-to-status latency) is counted from the runtime's committed decisions and from what the
broker acknowledges. The HTTP endpoint is served by the agent's own event loop, so a /healthz answer
proves the loop is alive, and the store (which is not thread-safe) is only ever read from that loop.

See docs/metrics.md for every series, /healthz and the choices made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent import __version__
from agent.config import parse_address
from agent.core.actions import EmitEvent, PublishStatus
from agent.core.events import DesiredReceived
from agent.core.model import Absent, Execution
from agent.outbox import Message
from agent.protocol import OBSERVED_STATES
from agent.runtime import Decided

if TYPE_CHECKING:
    from agent.daemon import Agent

log = structlog.get_logger("agent.metrics")

PREFIX = "reconcile_agent"
ABSENT = "absent"  # the pseudo-state of an execution the agent does not (or no longer) know
# Seconds from a desired document's decision to the broker's acknowledgement of its first status: a few
# milliseconds normally, up to a broker outage when the status waited in the outbox.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
MAX_AWAITING = 10_000  # statuses waited for at once; past it the oldest are dropped (unmeasured)
BIND_RETRY_S = 30.0  # how often to try the metrics address again while it cannot be bound
REQUEST_TIMEOUT_S = 10.0  # a client has this long to send its request head
MAX_REQUEST_HEAD = 16 * 1024  # bytes of request line and headers

# Event documents (type -> counter attribute) counted when a decision emits them.
_COUNTED_EVENTS = {
    "restart": "restarts",
    "rollback": "rollbacks",
    "desired_rejected": "rejections",
    "lost": "lost",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_REASONS |= {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def _state_of(state: Execution | Absent) -> str:
    return state.state_type if isinstance(state, Execution) else ABSENT


def transitions_of(decided: Decided) -> list[tuple[str, str]]:
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

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterable[Metric]:
        agent = self._agent
        executions = GaugeMetricFamily(
            f"{PREFIX}_executions", "Executions known to the agent, by observed state.", labels=["state"]
        )
        counts = agent.runtime.counts()
        for state in OBSERVED_STATES:
            executions.add_metric([state], counts.get(state, 0))
        yield executions
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected",
            "1 while the MQTT session to the broker is established, else 0.",
            value=1 if agent.link.connected.is_set() else 0,
        )
        try:
            depth = agent.store.depth()
        except Exception as exc:
            log.warning("metrics: cannot read the outbox depth", error=str(exc))
        else:
            yield GaugeMetricFamily(
                f"{PREFIX}_outbox_depth",
                "Messages stored durably and not yet acknowledged by the broker.",
                value=depth,
            )


class Metrics:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.log = log.bind(node=agent.config.node_id)
        self.registry = CollectorRegistry()
        registry = self.registry
        Info(PREFIX, "The agent: its version and node id (value always 1).", registry=registry).info(
            {"version": __version__, "node": agent.config.node_id}
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
        registry.register(_Live(agent))
        ProcessCollector(registry=registry)
        # (status topic, revision) -> decision time, for statuses made by a desired document and not yet out.
        self._awaiting: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._awaiting_topics: Tally[str] = Tally()
        self.serving = asyncio.Event()  # set while the HTTP endpoint is listening

    # --- counting ----------------------------------------------------------------------------------

    def observe_decision(self, decided: Decided) -> None:
        """Called by the runtime after every committed decision. Never raises."""
        try:
            self._count(decided)
        except Exception:
            self.log.exception("metrics: cannot count a decision", execution=decided.execution_id)

    def _count(self, decided: Decided) -> None:
        for before, after in transitions_of(decided):
            self.transitions.labels(before, after).inc()
        for action in decided.actions:
            if isinstance(action, EmitEvent):
                counter = _COUNTED_EVENTS.get(str(action.document.get("type")))
                if counter is not None:
                    getattr(self, counter).inc()
        if isinstance(decided.event, DesiredReceived):
            first = next(
                (
                    a
                    for a in decided.actions
                    if isinstance(a, PublishStatus) and a.execution_id == decided.execution_id
                ),
                None,
            )
            if first is not None:
                self._await(self.agent.topics.status(first.execution_id), first.revision, decided.at)

    def _await(self, topic: str, revision: int, at: float) -> None:
        if (topic, revision) in self._awaiting:  # revisions never repeat; be safe all the same
            return
        self._awaiting[(topic, revision)] = at
        self._awaiting_topics[topic] += 1
        while len(self._awaiting) > MAX_AWAITING:
            (old_topic, _), _ = self._awaiting.popitem(last=False)
            self._forget_topic(old_topic)

    def _forget_topic(self, topic: str) -> None:
        self._awaiting_topics[topic] -= 1
        if self._awaiting_topics[topic] <= 0:
            del self._awaiting_topics[topic]

    def observe_published(self, messages: list[Message]) -> None:
        """Called by the MQTT link with what the broker just acknowledged. Never raises."""
        try:
            for message in messages:
                self._published(message)
        except Exception:
            self.log.exception("metrics: cannot count published messages")

    def _published(self, message: Message) -> None:
        if not message.payload:
            return
        if message.topic == self.agent.topics.events:
            # Rejections of a desired document on a bad topic are node events: they are queued outside the
            # lifecycle (no decision), so they are counted here, once the broker has them.
            if b"desired_rejected" in message.payload:
                document = json.loads(message.payload)
                if document.get("type") == "desired_rejected" and document.get("execution_id") is None:
                    self.rejections.inc()
            return
        if message.topic not in self._awaiting_topics:
            return
        revision = json.loads(message.payload).get("revision")
        if not isinstance(revision, int):
            return
        at = self._awaiting.pop((message.topic, revision), None)
        if at is None:
            return
        self._forget_topic(message.topic)
        self.desired_to_status.observe(max(0.0, self.agent.runtime.clock.now() - at))

    # --- health ------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 and a short report while the store answers; 503 and the reason when it does not.

        Being answered at all proves the event loop turns: this runs on it.
        """
        report: dict[str, Any] = {
            "status": "ok",
            "node_id": self.agent.config.node_id,
            "event_loop": "ok",
            "broker_connected": self.agent.link.connected.is_set(),
        }
        try:
            report["outbox_depth"] = self.agent.store.depth()
        except Exception as exc:
            report["status"] = "unhealthy"
            report["store"] = f"error: {exc}"
            return 503, report
        report["store"] = "ok"
        return 200, report

    # --- HTTP --------------------------------------------------------------------------------------

    async def serve(self, address: str) -> None:
        """Serve GET /metrics and GET /healthz on host:port until cancelled.

        An address that cannot be bound (in use, not local, privileged) does not stop the agent: the error
        is logged and binding is tried again every BIND_RETRY_S, while reconciliation goes on.
        """
        host, port = parse_address(address)  # the config refused a bad one when it was loaded
        last_error = None
        while True:
            try:
                server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_HEAD)
            except OSError as exc:
                error = str(exc)
                report = self.log.error if error != last_error else self.log.debug
                report(
                    "metrics: cannot listen; the agent runs on without metrics and tries again",
                    address=address,
                    error=error,
                    retry_in_s=BIND_RETRY_S,
                )
                last_error = error
                await asyncio.sleep(BIND_RETRY_S)
                continue
            break
        async with server:
            self.log.info("metrics: serving /metrics and /healthz", address=address)
            self.serving.set()
            try:
                await server.serve_forever()
            finally:
                self.serving.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                reply = _Reply.text(408, "request timeout\n")
            except asyncio.LimitOverrunError:
                reply = _Reply.text(431, "request head too large\n")
            else:
                try:
                    reply = self._respond(head)
                except Exception:
                    self.log.exception("metrics: cannot answer a request")
                    reply = _Reply.text(503, "internal error\n")
            writer.write(reply.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> _Reply:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _Reply.text(400, "bad request\n")
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return _Reply.text(404, "not found: try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            reply = _Reply.text(405, "method not allowed\n")
            reply.headers["Allow"] = "GET, HEAD"
            return reply
        if path == "/healthz":
            code, report = self.health()
            body = (json.dumps(report) + "\n").encode()
            return _Reply(code, {"Content-Type": "application/json"}, body, head_only=method == "HEAD")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return _Reply(200, {"Content-Type": content_type}, encoder(self.registry), head_only=method == "HEAD")


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    head_only: bool = False  # a HEAD request: the headers of the GET reply, without its body

    @classmethod
    def text(cls, status: int, text: str) -> _Reply:
        return cls(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())

    def encode(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if self.head_only else self.body)

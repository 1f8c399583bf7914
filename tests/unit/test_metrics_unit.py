"""Metrics without I/O: address parsing, counting from synthetic decisions, /healthz and HTTP replies."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from agent import __version__
from agent.config import AgentConfig, MetricsConfig, parse_address
from agent.core.actions import EmitEvent, PublishStatus
from agent.core.clock import Now
from agent.core.events import DesiredDeleted, DesiredReceived, ProcessExited, TimerFired
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution
from agent.core.status import event_document, status_document
from agent.metrics import Metrics, Sources, transitions_of
from agent.metrics_http import Endpoint
from agent.outbox import Message
from agent.protocol import OBSERVED_STATES, Accepted, ObservedState, Topics, dumps, parse_desired
from agent.runtime import Decision

NODE = "node-1"
TOPICS = Topics("reconcile/v1", NODE)


# --- address parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        (":9100", (None, 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:9100", ("::", 9100)),
        ("[fe80::1%eth0]:9100", ("fe80::1%eth0", 9100)),
        (" 127.0.0.1:9100 ", ("127.0.0.1", 9100)),
    ],
)
def test_parse_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1", "no port"),
        ("9100", "no port"),
        ("", "no port"),
        ("::1:9100", "brackets"),
        ("[::1]9100", "[IPv6 address]:port"),
        ("[::1]", "[IPv6 address]:port"),
        ("[]:9100", "[IPv6 address]:port"),
        ("host:", "not a number"),
        ("host:http", "not a number"),
        ("host:-1", "not a number"),
        ("host:0", "between 1 and 65535"),
        ("host:65536", "between 1 and 65535"),
        ("bad host:9100", "not a host name"),
        ("http://host:9100", "not a host name"),
    ],
)
def test_parse_address_rejects(address: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_address(address)


def test_bad_address_is_refused_by_the_config() -> None:
    with pytest.raises(ValidationError, match="no port"):
        MetricsConfig(address="localhost")


# --- a fake agent: only what Metrics reads ------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.depth_value = 0
        self.broken: Exception | None = None

    def depth(self) -> int:
        if self.broken is not None:
            raise self.broken
        return self.depth_value


def fake_agent(address: str | None = None, node_id: str = NODE) -> Any:
    config = AgentConfig(node_id=node_id, metrics=MetricsConfig(address=address))
    clock = SimpleNamespace(now=lambda: 1000.0)
    return SimpleNamespace(
        config=config,
        topics=Topics("reconcile/v1", node_id),
        store=FakeStore(),
        runtime=SimpleNamespace(counts=lambda: {"running": 2, "failed": 1}, clock=clock),
        link=SimpleNamespace(connected=asyncio.Event()),
    )


def metrics_of(agent: Any) -> Metrics:
    """Metrics fed from the fake agent's parts, as agent/daemon.py feeds them from the real ones."""
    sources = Sources(
        counts=agent.runtime.counts,
        connected=agent.link.connected.is_set,
        outbox_depth=agent.store.depth,
        now=agent.runtime.clock.now,
    )
    return Metrics(agent.config.node_id, sources)


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# --- synthetic decisions ----------------------------------------------------------------------------


def accepted(execution_id: str, generation: int = 1, state: str = "running") -> Accepted:
    document = {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": state},
        "spec": {"command": ["sleep", "1"]},
    }
    parsed = parse_desired(execution_id, json.dumps(document).encode(), 1 << 20)
    assert isinstance(parsed, Accepted)
    return parsed


def execution(execution_id: str, state_type: str, revision: int = 1) -> Execution:
    return Execution(
        execution_id=execution_id,
        node_id=NODE,
        job_id=execution_id,
        revision=revision,
        created_at=900.0,
        updated_at=900.0,
        observed=ObservedState(state_type=state_type),  # type: ignore[arg-type]
    )


def real_decision(state: Execution | Absent, event: Any, at: float = 990.0) -> Decision:
    """A decision made by the real (pure) lifecycle, as the runtime hands it to its observers."""
    new, actions = decide(state, event, Now(at, at))
    return Decision(state.execution_id, event, state, new, actions)


def status_messages(decided: Decision, at: float) -> list[Message]:
    """The status rows of ``decided`` as the publisher reports them acknowledged: the runtime stamps the
    one answering a desired document (Decision.answer) with the time it was decided."""
    return [
        Message(TOPICS.status(a.execution_id), dumps(a.document), True, at if a is decided.answer else None)
        for a in decided.actions
        if isinstance(a, PublishStatus)
    ]


def test_a_new_execution_counts_every_intermediate_state() -> None:
    parsed = accepted("web")
    decided = real_decision(
        Absent(execution_id="web", node_id=NODE), DesiredReceived(parsed.document, parsed.digest)
    )
    assert transitions_of(decided) == [("absent", "pending"), ("pending", "starting")]

    metrics = metrics_of(fake_agent())
    metrics.observe_decision(decided)
    samples = scrape(metrics)
    assert value(samples, "reconcile_agent_transitions_total", **{"from": "absent", "to": "pending"}) == 1
    assert value(samples, "reconcile_agent_transitions_total", **{"from": "pending", "to": "starting"}) == 1


def test_no_change_of_state_counts_no_transition() -> None:
    before = execution("web", "running", revision=4)
    after = before.model_copy(update={"revision": 5})
    document = status_document(after)
    decided = Decision("web", TimerFired("probe"), before, after, [PublishStatus("web", 5, document)])
    assert transitions_of(decided) == []


def test_deletion_ends_in_absent() -> None:
    before = execution("web", "stopped", revision=3)
    after = Absent(execution_id="web", node_id=NODE, revision=3)
    decided = Decision("web", DesiredDeleted(), before, after, [])
    assert transitions_of(decided) == [("stopped", "absent")]


def test_events_are_counted_by_type() -> None:
    metrics = metrics_of(fake_agent())
    before = execution("web", "validating", revision=3)
    after = execution("web", "starting", revision=4)

    def emit(event_type: str) -> EmitEvent:
        return EmitEvent(event_document(event_type, NODE, "web", 1.0))

    actions: list[Any] = [
        emit("restart"),
        PublishStatus("web", 4, status_document(after)),
        emit("lost"),
        emit("rollback"),
        emit("desired_rejected"),
        emit("restart"),
        emit("something_new"),  # unknown types are not counted anywhere, and do not break counting
    ]
    metrics.observe_decision(Decision("web", ProcessExited(1, 3), before, after, actions))
    samples = scrape(metrics)
    assert value(samples, "reconcile_agent_restarts_total") == 2
    assert value(samples, "reconcile_agent_lost_total") == 1
    assert value(samples, "reconcile_agent_rollbacks_total") == 1
    assert value(samples, "reconcile_agent_rejections_total") == 1
    assert (
        value(samples, "reconcile_agent_transitions_total", **{"from": "validating", "to": "starting"}) == 1
    )


def test_node_level_rejections_are_counted_when_queued() -> None:
    metrics = metrics_of(fake_agent())
    node_rejection = event_document("desired_rejected", NODE, None, 1.0, generation=None, reason="bad topic")
    execution_rejection = event_document("desired_rejected", NODE, "web", 1.0, generation=2, reason="bad")
    started = event_document("agent_started", NODE, None, 1.0)
    # The runtime tells the types of the node events it queues (the rejection on a bad topic, the start).
    metrics.observe_node_event("desired_rejected")
    metrics.observe_node_event("agent_started")
    # What the broker then acknowledges counts nothing more.
    metrics.observe_published(
        [
            Message(TOPICS.events, dumps(node_rejection), retain=False),
            # counted by its decision already, not a second time when it goes out
            Message(TOPICS.events, dumps(execution_rejection), retain=False),
            Message(TOPICS.events, dumps(started), retain=False),
            Message(TOPICS.node_status, b'{"state": "online"}', retain=True),
        ]
    )
    assert value(scrape(metrics), "reconcile_agent_rejections_total") == 1


def test_desired_to_status_is_measured_to_the_first_acknowledged_revision() -> None:
    agent = fake_agent()
    metrics = metrics_of(agent)
    parsed = accepted("web")
    decided = real_decision(
        Absent(execution_id="web", node_id=NODE), DesiredReceived(parsed.document, parsed.digest), at=999.75
    )
    metrics.observe_decision(decided)
    statuses = [a for a in decided.actions if isinstance(a, PublishStatus)]
    assert [s.revision for s in statuses] == [1, 2]
    assert decided.answer is statuses[0]
    first, second = status_messages(decided, at=999.75)
    # The broker acknowledges revision 1 (with the node status riding along), then revision 2.
    metrics.observe_published([first, Message(TOPICS.node_status, b"{}", retain=True)])
    metrics.observe_published([second])
    samples = scrape(metrics)
    assert value(samples, "reconcile_agent_desired_to_status_seconds_count") == 1
    assert value(samples, "reconcile_agent_desired_to_status_seconds_sum") == pytest.approx(0.25)
    assert value(samples, "reconcile_agent_desired_to_status_seconds_bucket", le="0.25") == 1
    assert value(samples, "reconcile_agent_desired_to_status_seconds_bucket", le="0.1") == 0


def test_other_events_do_not_start_the_latency_clock() -> None:
    metrics = metrics_of(fake_agent())
    before = execution("web", "validating", revision=3)
    after = execution("web", "running", revision=4)
    document = status_document(after)
    decided = Decision("web", TimerFired("window"), before, after, [PublishStatus("web", 4, document)])
    metrics.observe_decision(decided)
    assert decided.answer is None
    metrics.observe_published(status_messages(decided, at=999.75))
    assert value(scrape(metrics), "reconcile_agent_desired_to_status_seconds_count") == 0


def test_a_broken_observation_is_logged_not_raised() -> None:
    metrics = metrics_of(fake_agent())
    broken_row: Any = SimpleNamespace(decided_at="not a time")
    metrics.observe_published([broken_row])
    broken: Any = SimpleNamespace(execution_id="web", actions=None, before=None, after=None, event=None)
    metrics.observe_decision(broken)


# --- scrape-time gauges, registries, health -----------------------------------------------------------


def test_gauges_are_read_at_scrape_time_with_every_state_present() -> None:
    agent = fake_agent()
    metrics = metrics_of(agent)
    samples = scrape(metrics)
    for state in OBSERVED_STATES:
        expected = {"running": 2, "failed": 1}.get(state, 0)
        assert value(samples, "reconcile_agent_executions", state=state) == expected
    assert value(samples, "reconcile_agent_broker_connected") == 0
    assert value(samples, "reconcile_agent_outbox_depth") == 0
    assert value(samples, "reconcile_agent_info", node=NODE, version=__version__) == 1

    agent.link.connected.set()
    agent.store.depth_value = 7
    samples = scrape(metrics)
    assert value(samples, "reconcile_agent_broker_connected") == 1
    assert value(samples, "reconcile_agent_outbox_depth") == 7

    agent.store.broken = RuntimeError("disk I/O error")
    samples = scrape(metrics)  # the rest of the scrape still works
    assert not any(name == "reconcile_agent_outbox_depth" for name, _ in samples)
    assert value(samples, "reconcile_agent_broker_connected") == 1


def test_two_agents_in_one_process_have_their_own_registries() -> None:
    first, second = metrics_of(fake_agent(node_id="a")), metrics_of(fake_agent(node_id="b"))
    first.restarts.inc()
    assert value(scrape(first), "reconcile_agent_restarts_total") == 1
    assert value(scrape(second), "reconcile_agent_restarts_total") == 0
    assert ("process_resident_memory_bytes", ()) in scrape(second)


def test_health_is_503_when_the_store_does_not_answer() -> None:
    agent = fake_agent()
    metrics = metrics_of(agent)
    code, report = metrics.health()
    assert code == 200
    assert report["status"] == "ok"
    assert report["store"] == "ok"
    agent.store.broken = RuntimeError("Cannot operate on a closed database.")
    code, report = metrics.health()
    assert code == 503
    assert report["status"] == "unhealthy"
    assert "closed database" in report["store"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 200),
        (b"HEAD /healthz HTTP/1.1\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"nonsense\r\n\r\n", 400),
    ],
)
def test_http_replies(head: bytes, status: int) -> None:
    reply = Endpoint(metrics_of(fake_agent()))._respond(head)
    assert reply.status == status
    encoded = reply.encode()
    assert encoded.startswith(f"HTTP/1.1 {status} ".encode())
    if head.startswith(b"HEAD"):
        assert encoded.endswith(b"\r\n\r\n")
        assert f"Content-Length: {len(reply.body)}".encode() in encoded


def test_openmetrics_is_served_when_asked_for() -> None:
    reply = Endpoint(metrics_of(fake_agent()))._respond(
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")

"""Metrics and /healthz over real HTTP, from the real agent on a real broker with real workloads."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

import agent.metrics_http
from agent import __version__
from agent.config import AgentConfig, MetricsConfig
from agent.protocol import OBSERVED_STATES
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    events_topic,
    running_agent,
    sleeper,
)
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_metrics(config: AgentConfig, port: int) -> AgentConfig:
    return config.model_copy(update={"metrics": MetricsConfig(address=f"127.0.0.1:{port}")})


def _get(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def http(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A real HTTP client (urllib, in a thread so the agent's loop keeps serving)."""
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}", method)


async def scrape(port: int) -> Samples:
    status, headers, body = await http(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def transitions(samples: Samples, **labels: str) -> float:
    """The sum of the transition counters whose labels include ``labels``."""
    return sum(
        v
        for (name, sample_labels), v in samples.items()
        if name == "reconcile_agent_transitions_total" and labels.items() <= dict(sample_labels).items()
    )


async def wait_scrape(port: int, check: Any, what: str, timeout: float = 15.0) -> Samples:
    async def ready() -> Samples | None:
        samples = await scrape(port)
        return samples if check(samples) else None

    result: Samples = await wait_until(ready, timeout, interval=0.05, what=what)
    return result


async def test_metrics_follow_the_workloads_and_the_broker(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    port = free_port()
    config = with_metrics(config_for(broker, state_dir), port)
    async with running_agent(config) as running:
        await wait_until(running.metrics_endpoint.serving.is_set, 10, what="metrics serving")

        # One workload running, one crashing until its restarts run out, one unreadable document, and one
        # document on a topic whose execution id is not a valid name (a node-level rejection).
        await watching.publish(desired_topic(NODE, "web"), desired("web", command=sleeper()), retain=True)
        # A window far longer than the workload lives: each attempt fails before it is stable, however
        # loaded the machine (a 0.2 s window let 'sh -c exit 3' pass validation and restart for ever).
        crash = desired("crash", command=["sh", "-c", "exit 3"], window_s=20.0, policy="on-failure")
        await watching.publish(desired_topic(NODE, "crash"), crash, retain=True)
        await watching.publish(desired_topic(NODE, "rej"), b"{not json", retain=True)
        await watching.publish(desired_topic(NODE, "bad$id"), desired("x", command=sleeper()), retain=True)

        await StatusLog(watching, NODE, "web").wait_state("running")
        crashed = await StatusLog(watching, NODE, "crash").wait_state("failed")
        await StatusLog(watching, NODE, "rej").wait_state("failed")
        await watching.wait_for(
            lambda m: (
                m.topic == events_topic(NODE)
                and m.json()["type"] == "desired_rejected"
                and m.json()["execution_id"] is None
            ),
            what="the node-level rejection",
        )
        assert crashed["restart_count"] == 3

        # The broker acknowledges to the agent independently of delivering to the probe: wait for both
        # first statuses and the node-level rejection to be counted, and for the outbox to be empty.
        samples = await wait_scrape(
            port,
            lambda s: (
                value(s, "reconcile_agent_desired_to_status_seconds_count") == 2
                and value(s, "reconcile_agent_rejections_total") == 2
                and value(s, "reconcile_agent_outbox_depth") == 0
            ),
            "every status acknowledged and counted",
        )

        executions = {
            state: value(samples, "reconcile_agent_executions", state=state) for state in OBSERVED_STATES
        }
        assert executions == {state: {"running": 1, "failed": 2}.get(state, 0) for state in OBSERVED_STATES}
        assert transitions(samples, **{"from": "absent", "to": "pending"}) == 2  # web and crash
        assert transitions(samples, **{"from": "absent", "to": "failed"}) == 1  # rej, never accepted
        assert transitions(samples, **{"from": "validating", "to": "running"}) == 1  # web
        assert transitions(samples, to="failed") == 2
        assert transitions(samples, to="starting") == 1 + 1 + 3  # web, crash, and each of its restarts
        assert value(samples, "reconcile_agent_restarts_total") == crashed["restart_count"]
        assert value(samples, "reconcile_agent_rollbacks_total") == 0
        assert value(samples, "reconcile_agent_lost_total") == 0
        assert value(samples, "reconcile_agent_broker_connected") == 1
        assert value(samples, "reconcile_agent_info", node=NODE, version=__version__) == 1
        assert (value(samples, "process_resident_memory_bytes") or 0) > 0
        assert (value(samples, "reconcile_agent_desired_to_status_seconds_sum") or 0) > 0
        assert value(samples, "reconcile_agent_desired_to_status_seconds_bucket", le="+Inf") == 2

        status, headers, body = await http(port, "/healthz")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["store"] == "ok"
        assert health["broker_connected"] is True

        status, _, body = await http(port, "/nope")
        assert status == 404
        status, headers, _ = await http(port, "/metrics", method="POST")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"
        status, headers, body = await http(port, "/healthz", method="HEAD")
        assert status == 200
        assert body == b""

        # The broker goes away: the agent says so, and stays healthy (it reconciles offline by design).
        await broker.astop()
        await wait_scrape(
            port, lambda s: value(s, "reconcile_agent_broker_connected") == 0, "broker_connected 0"
        )
        status, _, body = await http(port, "/healthz")
        assert status == 200
        assert json.loads(body)["broker_connected"] is False


async def test_an_address_in_use_keeps_the_agent_running_and_is_retried(
    broker: Broker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.metrics_http, "BIND_RETRY_S", 0.05)
    port = free_port()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with capture_logs() as logs:
            async with running_agent(with_metrics(config_for(broker, state_dir), port)) as running:

                def refused() -> list[dict[str, Any]]:
                    return [e for e in logs if e["event"].startswith("metrics: cannot listen")]

                await wait_until(refused, 10, what="the bind error logged")
                assert refused()[0]["log_level"] == "error"
                assert not running.metrics_endpoint.serving.is_set()
                assert running.link.connected.is_set()  # the agent itself is up

                blocker.close()
                await wait_until(
                    running.metrics_endpoint.serving.is_set, 10, what="metrics serving after a retry"
                )
                status, _, body = await http(port, "/healthz")
                assert status == 200, body
                # Error once, then quietly: a retry with the same error is not logged again at error.
                assert len([e for e in refused() if e["log_level"] == "error"]) == 1
    finally:
        blocker.close()


async def test_metrics_are_off_by_default(broker: Broker, state_dir: Path) -> None:
    async with running_agent(config_for(broker, state_dir)) as running:
        assert running.config.metrics.address is None
        assert "metrics" not in {task.get_name() for task in asyncio.all_tasks()}


async def test_misbehaving_clients_get_an_answer_and_do_not_stop_the_endpoint(
    broker: Broker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.metrics_http, "REQUEST_TIMEOUT_S", 0.2)
    port = free_port()
    async with running_agent(with_metrics(config_for(broker, state_dir), port)) as running:
        await wait_until(running.metrics_endpoint.serving.is_set, 10, what="metrics serving")

        async def raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                async with asyncio.timeout(10):
                    return await reader.read()
            finally:
                writer.close()

        assert (await raw(b"")).startswith(b"HTTP/1.1 408 ")  # says nothing: timed out
        too_long = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"x" * (agent.metrics_http.MAX_REQUEST_HEAD + 1)
        assert (await raw(too_long)).startswith(b"HTTP/1.1 431 ")
        assert (await raw(b"\x16\x03\x01 not http\r\n\r\n")).startswith(b"HTTP/1.1 400 ")  # e.g. TLS
        # A client that hangs up at once is nothing to worry about either.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        status, _, _ = await http(port, "/healthz")
        assert status == 200


async def test_a_rollback_is_counted(broker: Broker, watching: Probe, state_dir: Path) -> None:
    port = free_port()
    async with running_agent(with_metrics(config_for(broker, state_dir), port)) as running:
        await wait_until(running.metrics_endpoint.serving.is_set, 10, what="metrics serving")
        await watching.publish(desired_topic(NODE, "v1"), desired("v1", command=sleeper()), retain=True)
        await StatusLog(watching, NODE, "v1").wait_state("running")
        # Fails before it is stable however loaded the machine (the window outlives it by far).
        update = desired("v2", command=["sh", "-c", "exit 1"], window_s=20.0) | {
            "previous_execution_id": "v1"
        }
        await watching.publish(desired_topic(NODE, "v2"), update, retain=True)
        await StatusLog(watching, NODE, "v2").wait_state("failed")
        await StatusLog(watching, NODE, "v1").wait(
            lambda d: "rollback" in d["details"], what="v1 rolled back"
        )
        samples = await wait_scrape(
            port, lambda s: value(s, "reconcile_agent_rollbacks_total") == 1, "one rollback counted"
        )
        assert value(samples, "reconcile_agent_restarts_total") == 0
        assert transitions(samples, **{"from": "stopped", "to": "starting"}) == 1  # v1 runs again

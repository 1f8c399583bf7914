"""Running the real agent in tests: in-process (fast, same loop) or as a subprocess via the CLI.

Either way it talks to a real broker over TCP and runs real workloads; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent.config import AgentConfig, LogConfig, MqttConfig
from agent.daemon import Agent
from tests.support.broker import Broker
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until, wait_until_sync

PREFIX = "reconcile/v1"


def desired_topic(node: str, execution_id: str) -> str:
    return f"{PREFIX}/nodes/{node}/executions/{execution_id}/desired"


def status_topic(node: str, execution_id: str) -> str:
    return f"{PREFIX}/nodes/{node}/executions/{execution_id}/status"


def node_topic(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/status"


def node_counts(probe: Probe, node: str) -> dict[str, int]:
    """The node's executions by observed state, from the newest node status ``probe`` has seen.

    Read this rather than every execution's status where there are thousands: a probe subscribed at
    QoS 1 to all of them can fall behind on a loaded machine, and the broker drops what queues past
    1000 for it.
    """
    for message in reversed(probe.messages):
        if message.topic == node_topic(node) and message.payload:
            counts: dict[str, int] = message.json()["executions"]
            return counts
    return {}


async def run_sleepers(probe: Probe, node: str, ids: list[str], timeout: float) -> None:
    """Publish a ``sleep`` execution under each id and wait until the node counts them all running."""
    for execution_id in ids:
        await probe.publish(
            desired_topic(node, execution_id), desired(execution_id, command=sleeper()), retain=True
        )
    await wait_until(
        lambda: node_counts(probe, node) == {"running": len(ids)},
        timeout=timeout,
        interval=0.5,
        what=f"{len(ids)} running",
    )


async def status_in(probe: Probe, node: str, execution_id: str, state: str) -> dict[str, Any]:
    """The first status of ``execution_id`` in ``state`` (subscribing to that one topic for it)."""
    topic = status_topic(node, execution_id)
    await probe.subscribe(topic)
    message = await probe.wait_for(
        lambda m: m.topic == topic and bool(m.payload) and m.json()["observed_state"]["state_type"] == state,
        timeout=30,
        what=f"{execution_id} {state}",
    )
    document: dict[str, Any] = message.json()
    return document


def events_topic(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/events"


def desired(
    execution_id: str,
    generation: int = 1,
    state: str = "running",
    command: list[str] | None = None,
    *,
    window_s: float = 0.2,
    policy: str = "never",
    **spec: Any,
) -> dict[str, Any]:
    """A desired document with short windows, so tests run fast."""
    document: dict[str, Any] = {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": state},
    }
    if command is not None:
        document["spec"] = {
            "command": command,
            "validation": {"window_s": window_s, "deadline_s": 30.0},
            "restart": {"policy": policy, "max_restarts": 3, "backoff_s": 0.1, "backoff_max_s": 1.0},
            "stop": {"signal": "SIGTERM", "grace_s": 2.0},
            **spec,
        }
    return document


def sleeper(seconds: float = 300) -> list[str]:
    return ["sleep", str(seconds)]


def config_for(broker: Broker, state_dir: Path, node_id: str = "node-1", **mqtt: Any) -> AgentConfig:
    return AgentConfig(
        node_id=node_id,
        state_dir=state_dir,
        mqtt=MqttConfig(host=broker.host, port=broker.port, **mqtt),
        log=LogConfig(format="console", level="debug"),
    )


@asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[Agent]:
    """The agent in this event loop, connected to its broker before the test goes on."""
    async with Agent(config) as agent:
        await wait_until(agent.link.connected.is_set, timeout=10, what="agent connected")
        yield agent


class StatusLog:
    """Reads an execution's published statuses off a probe: revisions and state types in order."""

    def __init__(self, probe: Probe, node: str, execution_id: str) -> None:
        self.probe = probe
        self.topic = status_topic(node, execution_id)

    def documents(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.probe.messages_on(self.topic) if m.payload]

    def states(self) -> list[str]:
        return [d["observed_state"]["state_type"] for d in self.documents()]

    def revisions(self) -> list[int]:
        return [d["revision"] for d in self.documents()]

    async def wait_state(self, state_type: str, timeout: float = 15.0, after: int = 0) -> dict[str, Any]:
        message = await self.probe.wait_for(
            lambda m: (
                m.topic == self.topic
                and bool(m.payload)
                and m.json()["observed_state"]["state_type"] == state_type
            ),
            timeout,
            after=after,
            what=f"{self.topic} in state {state_type}",
        )
        document: dict[str, Any] = message.json()
        return document

    async def wait(self, predicate: Any, timeout: float = 15.0, what: str = "") -> dict[str, Any]:
        def check(m: Message) -> bool:
            return m.topic == self.topic and bool(m.payload) and bool(predicate(m.json()))

        message = await self.probe.wait_for(check, timeout, what=what or self.topic)
        document: dict[str, Any] = message.json()
        return document


def ts(value: str) -> float:
    """Epoch seconds of an RFC 3339 time the agent published."""
    return datetime.fromisoformat(value).timestamp()


def state(document: dict[str, Any]) -> str:
    return str(document["observed_state"]["state_type"])


def message(document: dict[str, Any]) -> str:
    return str(document["observed_state"]["message"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def pid_of(document: dict[str, Any]) -> int:
    reference = document["compute_reference"]
    assert reference, document
    assert reference.startswith("pid:"), reference
    return int(reference.removeprefix("pid:"))


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class AgentProcess:
    """The agent as a separate process, started with the real CLI: ``python -m agent run --config``."""

    def __init__(
        self,
        broker: Broker,
        workdir: Path,
        node_id: str = "node-1",
        state_dir: Path | None = None,
        python: Path | None = None,
        **config: Any,
    ) -> None:
        self.workdir = workdir
        self.python = python  # another version's venv (tests/support/old_agent.py), or this one
        self.state_dir = state_dir or workdir / "state"
        self.config_path = workdir / f"{node_id}.yaml"
        document = {
            "node_id": node_id,
            "state_dir": str(self.state_dir),
            "mqtt": {"host": broker.host, "port": broker.port},
            "log": {"format": "json", "level": "debug"},
        }
        for key, value in config.items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(document))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{node_id}.log"

    def start(self, env: dict[str, str] | None = None, open_files: tuple[int, int] | None = None) -> None:
        """Start it; ``env`` is added to this process's environment (libfaketime, for one); with
        ``open_files`` (soft, hard), it starts under that open-files limit, as a systemd unit would set it."""

        def limited() -> None:  # in the child, before exec: the limit the agent finds when it starts
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.python or sys.executable), "-m", "agent", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                # `-m` puts the working directory first on sys.path: another version must not find this tree.
                cwd=self.workdir if self.python else None,
                env={**os.environ, **env} if env else None,
                preexec_fn=limited if open_files is not None else None,  # noqa: PLW1509  (tests start it alone)
            )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"raw": line})
        return lines

    def wait_logged(self, event: str, timeout: float = 15.0) -> None:
        wait_until_sync(
            lambda: any(line.get("event") == event for line in self.log_lines()),
            timeout,
            what=f"log {event!r}",
        )


async def wait_rejected(
    probe: Probe, node: str, execution_id: str, reason: str, after: int = 0
) -> dict[str, Any]:
    """Wait for the Rejection rules to be followed for ``execution_id``: a ``desired_rejected`` event with
    ``reason``, then a status whose ``details.rejected`` says it; that status."""
    event = await probe.wait_for(
        lambda m: (
            m.topic == events_topic(node)
            and m.json()["type"] == "desired_rejected"
            and m.json()["execution_id"] == execution_id
        ),
        after=after,
        what=f"{execution_id} rejected",
    )
    assert event.json()["reason"] == reason
    message = await probe.wait_for(
        lambda m: (
            m.topic == status_topic(node, execution_id)
            and bool(m.payload)
            and m.json()["details"].get("rejected", {}).get("reason") == reason
        ),
        after=after,
        what=f"{execution_id} status with details.rejected",
    )
    document: dict[str, Any] = message.json()
    return document

"""The agent under systemd: sd_notify from the real process, and the unit file as systemd reads it.

The agent runs as ``python -m agent run --config FILE`` with NOTIFY_SOCKET pointing at a real datagram
socket that stands in for systemd. The unit file is checked with ``systemd-analyze`` when it is installed
(nothing is installed by the tests).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import programs
from tests.support.broker import Broker
from tests.support.notify import Notification, NotifySocket

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "systemd" / "reconcile-agent.service"
CONFIG_EXAMPLE = REPO_ROOT / "config" / "agent.example.yaml"
WATCHDOG_USEC = 200_000  # pings every 0.1 s
EXPOSURE_TARGET = 5.0
CONNACK_NOT_AUTHORIZED = bytes([0x20, 0x02, 0x00, 0x05])


class NotifiedAgent:
    """The agent as systemd starts it: its own process, NOTIFY_SOCKET and WATCHDOG_USEC in its env."""

    def __init__(self, workdir: Path, systemd: NotifySocket, host: str, port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = workdir / "state"
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "node_id": "node-1",
                    "state_dir": str(self.state_dir),
                    "mqtt": {"host": host, "port": port},
                    "log": {"format": "json", "level": "debug"},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("RECONCILE_", "WATCHDOG_"))}
        env |= {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
            )

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") == event:
                lines.append(entry)
        return lines

    def first_logged_at(self, event: str) -> float:
        entries = self.logged(event)
        assert entries, f"{event!r} not logged:\n{self.log_path.read_text(errors='replace')}"
        return datetime.fromisoformat(entries[0]["timestamp"]).timestamp()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path) as sock:
        yield sock


@pytest.fixture
def agents(state_dir: Path) -> Iterator[list[NotifiedAgent]]:
    """``state_dir`` is requested for its cleanup of workloads under the test's tmp dir."""
    started: list[NotifiedAgent] = []
    yield started
    for agent in started:
        agent.kill()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago): connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_ready(agent: NotifiedAgent, ready: Notification, attempt_event: str) -> None:
    assert ready.fields["MAINPID"] == str(agent.proc.pid)
    assert ready.fields["STATUS"]
    # READY=1 came after the store was opened and after the first connection attempt was logged.
    assert (agent.state_dir / "agent.db").exists()
    assert agent.first_logged_at(attempt_event) <= ready.wall


def assert_clean_stop(agent: NotifiedAgent, systemd: NotifySocket) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    systemd.wait_for("STOPPING=1", timeout=15)
    assert agent.proc.wait(timeout=15) == 0


# --- sd_notify from the real agent ----------------------------------------------------------------------


def test_ready_comes_after_the_first_attempt_even_with_the_broker_down(
    tmp_path: Path, systemd: NotifySocket, agents: list[NotifiedAgent]
) -> None:
    agent = NotifiedAgent(tmp_path / "agent", systemd, "127.0.0.1", closed_port())
    agents.append(agent)

    ready = systemd.wait_for("READY=1", timeout=30)
    assert_ready(agent, ready, "broker unreachable")

    # The pings keep coming at half of WATCHDOG_USEC, from the agent's event loop.
    pings = systemd.pings(10)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.07 < statistics.median(gaps) < 0.15, gaps
    assert max(gaps) < WATCHDOG_USEC / 1_000_000, gaps  # systemd would never have fired

    assert_clean_stop(agent, systemd)


def test_ready_waits_until_the_first_attempt_is_over(
    tmp_path: Path, systemd: NotifySocket, agents: list[NotifiedAgent]
) -> None:
    """A "broker" that accepts the TCP connection and does not answer holds the first attempt open."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        agent = NotifiedAgent(tmp_path / "agent", systemd, "127.0.0.1", listener.getsockname()[1])
        agents.append(agent)
        connection, _ = listener.accept()
        with connection:
            # The attempt is under way (the agent waits 10 s for a CONNACK): alive, pinging, not ready.
            systemd.pings(5)
            assert not any("READY=1" in note for note in systemd.received)
            # Now the broker refuses (MQTT 3.1.1 CONNACK, code 5: not authorized): the attempt is over,
            # and only now is the agent ready.
            connection.sendall(CONNACK_NOT_AUTHORIZED)
            ready = systemd.wait_for("READY=1", timeout=30)
    assert_ready(agent, ready, "broker unreachable")
    assert_clean_stop(agent, systemd)


def test_ready_with_the_broker_up_then_stopping_on_sigterm(
    tmp_path: Path, broker: Broker, systemd: NotifySocket, agents: list[NotifiedAgent]
) -> None:
    agent = NotifiedAgent(tmp_path / "agent", systemd, broker.host, broker.port)
    agents.append(agent)

    ready = systemd.wait_for("READY=1", timeout=30)
    assert_ready(agent, ready, "connected")
    assert systemd.pings(3)

    assert_clean_stop(agent, systemd)


# --- the unit file --------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """KEY -> values, in order, from every section of the unit (systemd's syntax: no continuation lines)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_says_what_the_agent_relies_on() -> None:
    unit = unit_settings()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "KillMode": "process",
        "Restart": "on-failure",
        "StateDirectory": "reconcile-agent",
        "OOMPolicy": "continue",
    }
    assert {key: unit.get(key, [None])[-1] for key in expected} == expected
    assert unit["ExecStart"] == ["/usr/bin/reconcile-agent run --config /etc/reconcile-agent/agent.yaml"]
    # Both would pull the floor from under workloads that outlive an agent restart (docs/systemd.md).
    assert "PrivateTmp" not in unit
    assert "RemoveIPC" not in unit
    # The state directory systemd creates is the one the shipped configuration uses.
    assert yaml.safe_load(CONFIG_EXAMPLE.read_text())["state_dir"] == "/var/lib/reconcile-agent"


def systemd_analyze() -> str:
    return programs.require("systemd-analyze")  # installed by the test command; a skip names the package


def system_units_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.skip("no system unit directory with multi-user.target to verify the unit against")


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    # A root of our own: the unit verbatim, the host's system units (for its dependencies) and a stand-in
    # for /usr/bin/reconcile-agent, which verify checks for but this machine need not have installed.
    root = tmp_path / "root"
    shutil.copytree(system_units_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    executable = root / "usr/bin/reconcile-agent"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)

    result = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for unknown keys and bad values ("..., ignoring"): clean means silent.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_security_exposure_is_below_target() -> None:
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline (systemd >= 252 has it): {result.stderr}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security: {exposure}")
    assert exposure < EXPOSURE_TARGET, result.stdout

"""Shared fixtures: a real MQTT broker per test and a probe client on it.

Which broker: mosquitto when installed, else the embedded amqtt broker in a subprocess;
``RECONCILE_TEST_BROKER=amqtt|mosquitto`` forces one. The choice is printed in the session header.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was started (.venv/bin/pytest does not put the
# working directory on sys.path, and tests/ has no __init__.py).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.support.broker import Broker, describe_kind  # noqa: E402
from tests.support.mqtt import Probe  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker: {describe_kind()}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started broker on a free 127.0.0.1 port, data in the test's tmp dir; stopped at teardown."""
    instance = Broker(tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
async def probe(broker: Broker) -> AsyncIterator[Probe]:
    """A connected Probe on the ``broker`` fixture (subscribe to what the test needs)."""
    async with Probe(broker.host, broker.port) as client:
        yield client

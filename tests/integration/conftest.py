"""Integration fixtures: a state directory whose workloads are killed after the test, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leftovers
from tests.support.broker import Broker
from tests.support.mqtt import Probe


@pytest.fixture
async def watching(probe: Probe) -> Probe:
    """The probe, subscribed to every node's topics: another node's traffic must stay there, visibly."""
    await probe.subscribe("reconcile/v1/nodes/#")
    return probe


@pytest.fixture(autouse=True)
def no_cgroups_left(tmp_path: Path) -> Iterator[None]:
    """After every test (and its fixtures), the cgroups of every agent whose state lay under its tmp_path
    are emptied and removed: an agent killed with workloads running leaves them, by design."""
    yield
    for database in tmp_path.rglob("agent.db"):
        leftovers.remove_cgroups(database.parent)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    try:
        yield path
    finally:
        # Workloads outlive the agent by design, so a test must stop them itself.
        leftovers.kill(leftovers.workloads_under(tmp_path))
        leftovers.remove_cgroups(path)


@pytest.fixture
def stock(tmp_path: Path) -> Iterator[Broker]:
    """A stock mosquitto (its defaults: per-client queues of 1000 + 20 in flight, no persistence)."""
    broker = Broker(tmp_path / "stock-broker", stock=True)
    if broker.kind != "mosquitto":
        pytest.skip("needs mosquitto: the per-client queue limits under test are mosquitto's")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()

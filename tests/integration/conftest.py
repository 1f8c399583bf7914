"""Integration fixtures: a state directory whose workloads are killed after the test, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import kill_group
from tests.support.mqtt import Probe


def kill_workloads(state_dir: Path) -> None:
    """Workloads outlive the agent by design, so a test must clean up after them itself."""
    for pid_file in state_dir.glob("**/executions/*/pid-*"):
        try:
            kill_group(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue


@pytest.fixture
async def watching(probe: Probe) -> Probe:
    """The probe, subscribed to every node's topics: another node's traffic must stay there, visibly."""
    await probe.subscribe("reconcile/v1/nodes/#")
    return probe


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    try:
        yield path
    finally:
        kill_workloads(tmp_path)

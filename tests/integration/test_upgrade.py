"""In-place upgrade: the previous version of the agent runs workloads, is stopped as `systemctl restart`
does (SIGTERM), and this version starts on the same state directory and configuration.

The previous version is installed from a git ref into a venv of its own (tests/support/old_agent.py);
``RECONCILE_UPGRADE_FROM`` names another ref. It runs a long runner, one in its validation window, one
that will exit while no agent runs, and a completed one. This version must re-adopt the long runner
(same pid, restart_count unchanged), report the one that ended with its real exit code, resume the
window where it was, continue every revision by exactly one, and stop what the old version started.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import old_agent
from tests.support.agent import (
    AgentProcess,
    StatusLog,
    desired,
    desired_topic,
    node_topic,
    pid_alive,
    pid_of,
    sleeper,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.programs import require
from tests.support.wait import wait_until

# The agent before the state schema had a version (tests/fixtures/state-schema-1 was made with it).
# Move it forward to the last release when there is one.
PREVIOUS = os.environ.get("RECONCILE_UPGRADE_FROM", "2af4963")
WINDOW_S = 8.0
NODE = "node-1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("git")
    try:
        old_agent.resolve(PREVIOUS)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip(f"needs a git checkout with {PREVIOUS} (set RECONCILE_UPGRADE_FROM to another ref)")
    return old_agent.install(PREVIOUS, tmp_path_factory.mktemp("previous-agent"))


def arrival(probe: Probe, topic: str, document: dict[str, Any]) -> float:
    return next(m.time for m in probe.messages if m.topic == topic and m.payload and m.json() == document)


async def test_an_in_place_upgrade_keeps_every_workload_and_every_revision(
    tmp_path: Path, broker: Broker, watching: Probe, state_dir: Path, previous: Path
) -> None:
    assert not old_agent.agent_file(previous).startswith(str(old_agent.REPO)), "the old agent is its own copy"
    flag = tmp_path / "end-now"
    agent = AgentProcess(broker, tmp_path, node_id=NODE, state_dir=state_dir, python=previous)
    logs = {eid: StatusLog(watching, NODE, eid) for eid in ("long", "window", "ending", "done")}
    commands = {
        "long": sleeper(),
        "window": sleeper(),
        "ending": ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 7"],
        "done": ["sh", "-c", "echo finished"],
    }
    agent.start()
    try:
        for eid, command in commands.items():
            document = desired(eid, command=command, window_s=WINDOW_S if eid == "window" else 0.2)
            await watching.publish(desired_topic(NODE, eid), document, retain=True)
        long_running = await logs["long"].wait(lambda d: d["stable_at"] is not None, what="long stable")
        await logs["ending"].wait(lambda d: d["stable_at"] is not None, what="ending stable")
        await logs["done"].wait_state("completed")
        in_window = await logs["window"].wait_state("validating")
        window_started = arrival(watching, logs["window"].topic, in_window)

        agent.signal(signal.SIGTERM)  # as systemctl restart does
        assert agent.wait() == 0
        before = {eid: log.documents()[-1] for eid, log in logs.items()}
        flag.touch()  # the "ending" workload exits while no agent runs
        exit_file = state_dir / "executions" / "ending" / "exit-1"
        await wait_until(exit_file.exists, 10, what="the ending workload's exit file")

        agent.python = None  # this version, on the same state directory and configuration
        mark = watching.mark()
        agent.start()
        up = await watching.wait_for(
            lambda m: m.topic == node_topic(NODE) and not m.retain and m.json()["state"] == "online",
            WINDOW_S,
            after=mark,
            what="this version online",
        )
        upgraded = up.time
        ended = await logs["ending"].wait_state("failed")
        stable = await logs["window"].wait(lambda d: d["stable_at"] is not None, timeout=WINDOW_S + 15)
        stable_arrived = arrival(watching, logs["window"].topic, stable)
        print(
            f"\nupgraded from {old_agent.resolve(PREVIOUS)[:12]}, up {upgraded - window_started:.1f} s into a "
            f"{WINDOW_S} s window; it became stable {stable_arrived - window_started:.2f} s after it started; "
            f"'ending' reported exit code {ended['run_output']['exit_code']}"
        )
        assert ended["run_output"]["exit_code"] == 7, "the real exit code, from the supervisor's file"
        assert ended["revision"] == before["ending"]["revision"] + 1
        assert upgraded < window_started + WINDOW_S - 2, "this version was up well inside the window"
        assert stable_arrived - window_started >= WINDOW_S - 0.25, "the window was resumed, not skipped"
        assert pid_of(stable) == pid_of(in_window), "the window's workload was re-adopted, not restarted"
        assert stable["revision"] == before["window"]["revision"] + 1

        # The long runner: re-adopted as it was; and this version can stop what the old one started.
        pid = pid_of(long_running)
        assert pid_alive(pid)
        readopted = [line for line in agent.log_lines() if line.get("event") == "re-adopting"]
        assert {line["execution"]: line["pid"] for line in readopted}["long"] == pid
        stop = desired("long", generation=2, state="stopped", command=sleeper())
        await watching.publish(desired_topic(NODE, "long"), stop, retain=True)
        stopped = await logs["long"].wait_state("stopped")
        assert not pid_alive(pid)
        assert stopped["restart_count"] == long_running["restart_count"] == 0
        assert logs["done"].documents()[-1] == before["done"], "nothing to say about a completed one"

        for eid, log in logs.items():
            revisions = log.revisions()
            assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), (eid, revisions)
    finally:
        agent.kill()

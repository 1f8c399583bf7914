"""Time that jumps: the agent is killed and restarted with its wall clock 2 h ahead or behind.

libfaketime (Debian package ``faketime``) moves only the wall clock of the restarted agent
(``DONT_FAKE_MONOTONIC=1`` leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME alone), as NTP stepping the clock of
a board without a real-time clock, or a VM resumed after days, would. A validation window and a restart
backoff that were under way must fire after the real remaining seconds, not at once nor 2 h late, and
what the agent publishes must follow its (moved) wall clock.
"""

from __future__ import annotations

import glob
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, StatusLog, desired, desired_topic, node_topic, sleeper, ts
from tests.support.broker import Broker
from tests.support.mqtt import Message, Probe
from tests.support.programs import require
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow  # about 15 s each: windows long enough to restart the agent inside them

# Long enough that the restarted agent (its Python starts slowly under libfaketime: 2-4 s here) is up well
# before they end, so a timer that fired at once would be seen early.
WINDOW_S = 12.0
BACKOFF_S = 12.0
SHIFT_S = 2 * 3600.0
KILL_AT_S = 1.5  # the agent is killed this far into the window and the backoff


def libfaketime() -> str:
    require("faketime")  # skips naming the package; it also brings the library the agent is started with
    found = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1")
    )
    assert found, "the faketime package is installed but libfaketime.so.1 is not where Debian puts it"
    return found[0]


def arrival(messages: list[Message], topic: str, document: dict[str, Any]) -> float:
    """When the probe received this status document (time.monotonic())."""
    return next(m.time for m in messages if m.topic == topic and m.payload and m.json() == document)


@pytest.mark.parametrize("shift", [SHIFT_S, -SHIFT_S], ids=["ahead-2h", "behind-2h"])
async def test_windows_and_backoff_measure_real_time_across_a_restart_with_the_clock_moved(
    tmp_path: Path, broker: Broker, watching: Probe, state_dir: Path, shift: float
) -> None:
    faked = {"LD_PRELOAD": libfaketime(), "FAKETIME": f"{shift:+.0f}", "DONT_FAKE_MONOTONIC": "1"}
    agent = AgentProcess(broker, tmp_path, state_dir=state_dir)
    window = StatusLog(watching, "node-1", "window")
    backoff = StatusLog(watching, "node-1", "backoff")
    flag = tmp_path / "failed-once"
    agent.start()
    try:
        await watching.publish(
            desired_topic("node-1", "window"),
            desired("window", command=sleeper(), window_s=WINDOW_S),
            retain=True,
        )
        await watching.publish(
            desired_topic("node-1", "backoff"),
            desired(
                "backoff",
                command=["sh", "-c", f"test -e {flag} && exec sleep 300; touch {flag}; exit 1"],
                restart={
                    "policy": "on-failure",
                    "max_restarts": 3,
                    "backoff_s": BACKOFF_S,
                    "backoff_max_s": 60,
                },
            ),
            retain=True,
        )
        validating = await window.wait_state("validating")
        window_started = arrival(watching.messages, window.topic, validating)
        waiting = await backoff.wait(
            lambda d: "next_restart_at" in d["observed_state"]["details"], what="backoff"
        )
        backoff_started = arrival(watching.messages, backoff.topic, waiting)
        # Into the middle of the window: a wait on the clock, which is what this scenario is about.
        await wait_until(
            lambda: time.monotonic() >= window_started + KILL_AT_S, KILL_AT_S + 5, what="mid-window"
        )
        agent.signal(signal.SIGKILL)
        agent.wait()
        mark = watching.mark()
        agent.start(env=faked)
        up = await watching.wait_for(
            lambda m: m.topic == node_topic("node-1") and not m.retain and m.json()["state"] == "online",
            WINDOW_S,
            after=mark,
            what="the restarted agent online",
        )

        stable = await window.wait(lambda d: d["stable_at"] is not None, timeout=WINDOW_S + 10, what="stable")
        stable_arrived = arrival(watching.messages[mark:], window.topic, stable)
        again = await backoff.wait(
            lambda d: d["restart_count"] == 1 and d["observed_state"]["state_type"] == "validating",
            timeout=BACKOFF_S + 10,
            what="backoff restarted",
        )
        again_arrived = arrival(watching.messages[mark:], backoff.topic, again)
        print(
            f"\nclock {shift:+.0f} s at the restart, up {up.time - window_started:.2f} s into the window: "
            f"window of {WINDOW_S} s fired {stable_arrived - window_started:.2f} s after it started; "
            f"restart backoff of {BACKOFF_S} s fired {again_arrived - backoff_started:.2f} s after it was set"
        )
        assert up.time < window_started + WINDOW_S - 2, "the restarted agent was up well inside the window"
        # Not before the real window and backoff ended (0.25 s: the two publishes' own latencies) ...
        assert stable_arrived - window_started >= WINDOW_S - 0.25
        assert again_arrived - backoff_started >= BACKOFF_S - 0.25
        # ... nor 2 h late (the waits above would have timed out). What is published follows the restarted
        # agent's wall clock, which is moved:
        assert abs(ts(stable["stable_at"]) - time.time() - shift) < 60
        assert abs(ts(validating["updated_at"]) - time.time()) < 60
    finally:
        agent.kill()


async def test_a_wall_clock_step_while_the_agent_runs_moves_no_timer(
    tmp_path: Path, broker: Broker, watching: Probe, state_dir: Path
) -> None:
    offset = tmp_path / "faketime"  # libfaketime reads the offset from this file at every clock call
    offset.write_text("+0\n")
    faked = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }
    agent = AgentProcess(broker, tmp_path, state_dir=state_dir)
    window = StatusLog(watching, "node-1", "window")
    agent.start(env=faked)
    try:
        await watching.publish(
            desired_topic("node-1", "window"),
            desired("window", command=sleeper(), window_s=WINDOW_S),
            retain=True,
        )
        validating = await window.wait_state("validating")
        window_started = arrival(watching.messages, window.topic, validating)
        offset.write_text(f"{SHIFT_S:+.0f}\n")  # NTP steps the clock 2 h ahead
        stable = await window.wait(lambda d: d["stable_at"] is not None, timeout=WINDOW_S + 10, what="stable")
        fired = arrival(watching.messages, window.topic, stable) - window_started
        print(
            f"\nwall clock stepped {SHIFT_S:+.0f} s in the window: the {WINDOW_S} s window fired after {fired:.2f} s"
        )
        assert fired >= WINDOW_S - 0.25
        assert abs(ts(stable["stable_at"]) - time.time() - SHIFT_S) < 60, (
            "published times follow the wall clock"
        )
    finally:
        agent.kill()

"""sd_notify against a real unix datagram socket standing in for systemd: messages, watchdog pacing, errors.

The watchdog tests run the notifier's event loop in a thread of its own, so this thread can receive on
the socket (and block that loop on purpose) while the loop runs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.systemd import SystemdNotifier
from tests.support.notify import NotifySocket


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path) as sock:
        yield sock


class LoopThread:
    """An event loop running in its own thread, as the agent's loop runs beside the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        def shutdown() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.stop()


def notifier_for(sock: NotifySocket, **env: str) -> SystemdNotifier:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": sock.address, **env})
    assert notifier is not None
    return notifier


# --- from the environment -----------------------------------------------------------------------------


def test_no_notify_socket_means_no_notifier() -> None:
    assert SystemdNotifier.from_environment({}) is None
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": ""}) is None
    assert SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000"}) is None


def test_a_socket_that_is_not_unix_is_ignored_with_a_warning() -> None:
    with capture_logs() as logs:
        assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert [entry["log_level"] for entry in logs] == ["warning"]


def test_the_real_environment_is_read_by_default(
    systemd: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = SystemdNotifier.from_environment()
    assert notifier is not None
    assert notifier.watchdog_interval == 1.5
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30s: a ping every 15 s
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # not for us
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd: NotifySocket, env: dict[str, str], interval: float | None
) -> None:
    notifier = notifier_for(systemd, **env)
    assert notifier.watchdog_interval == interval
    notifier.close()


# --- messages -----------------------------------------------------------------------------------------


def test_ready_sends_ready_status_and_mainpid(systemd: NotifySocket) -> None:
    notifier = notifier_for(systemd)
    notifier.ready()
    note = systemd.wait_for("READY=1")
    assert note.fields == {"READY": "1", "STATUS": "running", "MAINPID": str(os.getpid())}
    notifier.close()


def test_stopping_and_status(systemd: NotifySocket) -> None:
    notifier = notifier_for(systemd)
    notifier.status("broker unreachable,\nretrying")
    assert systemd.wait_for("STATUS=broker unreachable, retrying").fields == {
        "STATUS": "broker unreachable, retrying"  # one line: a newline would start a bogus assignment
    }
    notifier.stopping()
    assert "STOPPING=1" in systemd.wait_for("STOPPING=1")
    notifier.close()


def test_abstract_socket_names(tmp_path: Path) -> None:
    with NotifySocket(tmp_path, abstract=True) as systemd:
        assert systemd.address.startswith("@")
        notifier = notifier_for(systemd)
        notifier.ready("up")
        assert systemd.wait_for("READY=1").fields["STATUS"] == "up"
        notifier.close()


def test_a_missing_socket_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    notifier = SystemdNotifier(str(path), watchdog_usec=None)
    with capture_logs() as logs:
        notifier.ready()
        for _ in range(5):
            assert notifier.notify("WATCHDOG=1") is False
        notifier.stopping()
    assert [(e["event"], e["log_level"]) for e in logs] == [("cannot notify systemd", "warning")]
    assert logs[0]["notify_socket"] == str(path)

    # systemd is back (same path): delivered again, and said so once.
    with NotifySocket(tmp_path) as systemd, capture_logs() as logs:
        notifier.address = systemd.address
        notifier.status("back")
        assert systemd.wait_for("STATUS=back")
    assert [e["event"] for e in logs] == ["notifying systemd again"]
    notifier.close()


def test_a_full_socket_never_blocks_the_sender(systemd: NotifySocket) -> None:
    # Nobody reads: the kernel's datagram queue (net.unix.max_dgram_qlen, 512 at most by default) fills.
    notifier = notifier_for(systemd)
    with capture_logs() as logs:
        started = time.monotonic()
        sent = [notifier.notify("WATCHDOG=1") for _ in range(2000)]
        elapsed = time.monotonic() - started
    assert sent[0] is True
    assert False in sent
    assert elapsed < 2.0
    assert [e["event"] for e in logs] == ["cannot notify systemd"]
    notifier.close()


# --- the watchdog -------------------------------------------------------------------------------------


def test_watchdog_pings_at_half_the_timeout(systemd: NotifySocket, loop_thread: LoopThread) -> None:
    notifier = notifier_for(systemd, WATCHDOG_USEC="100000")  # pings every 50 ms
    running = loop_thread.run(notifier.watchdog_forever())
    pings = systemd.pings(8)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.035 < statistics.median(gaps) < 0.1, gaps
    assert not running.done()
    notifier.close()


def test_no_pings_when_watchdog_pid_is_another_process(
    systemd: NotifySocket, loop_thread: LoopThread
) -> None:
    notifier = notifier_for(systemd, WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid() + 1))
    running = loop_thread.run(notifier.watchdog_forever())
    # Ten would-be intervals of silence.
    assert systemd.receive(timeout=0.5) is None
    assert not running.done()  # waits forever instead of returning (the daemon's TaskGroup needs that)
    notifier.close()


async def test_without_a_watchdog_it_waits_forever(systemd: NotifySocket) -> None:
    notifier = notifier_for(systemd)
    task = asyncio.create_task(notifier.watchdog_forever())
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert systemd.receive(timeout=0.01) is None
    notifier.close()


def test_a_blocked_event_loop_stops_the_pings(systemd: NotifySocket, loop_thread: LoopThread) -> None:
    """What makes the watchdog worth having: a stuck loop goes silent, so systemd restarts the agent."""
    watchdog_s = 0.2
    notifier = notifier_for(systemd, WATCHDOG_USEC=str(int(watchdog_s * 1_000_000)))  # pings every 0.1 s
    loop_thread.run(notifier.watchdog_forever())
    before = systemd.pings(3)

    blocked: dict[str, float] = {}
    unblocked = threading.Event()

    def stuck() -> None:
        # A synchronous call that hangs for three watchdog timeouts, on the loop thread.
        blocked["from"] = time.monotonic()
        time.sleep(3 * watchdog_s)
        blocked["to"] = time.monotonic()
        unblocked.set()

    loop_thread.loop.call_soon_threadsafe(stuck)
    after = systemd.pings(3)  # the pings come back once the loop runs again
    assert unblocked.wait(timeout=10)

    pings = [*before, *after]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    longest = max(gaps)
    # systemd would have fired: no ping for longer than WatchdogSec, and it is the gap of the block...
    assert longest > watchdog_s * 2, gaps
    during = [t for t in pings if blocked["from"] + 0.05 < t < blocked["to"]]
    assert during == [], (blocked, pings)
    # ...while the other gaps stay inside the timeout.
    assert sorted(gaps)[-2] < watchdog_s, gaps
    notifier.close()

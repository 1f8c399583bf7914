"""Probes end to end (issue #5): http, tcp and exec checks against targets the test controls.

Real broker, real workloads, the agent in process; the probe targets (an HTTP responder, a TCP listener,
a file) live in the test. Nothing waits a fixed time: the HTTP responder counts and timestamps the checks
it serves, and where a target cannot count (a closed port, a missing file) a sibling execution probing
the same target with a short validation deadline is the clock: once it has failed, the probe has been
failing for longer than its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    message,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
    state,
    ts,
)
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"
WAIT = 20.0  # generous: these tests must pass on a loaded two-core machine
TOLERANCE = 0.01  # published times have microseconds; allow for rounding only


def probed(
    execution_id: str,
    probe: dict[str, Any],
    *,
    window_s: float,
    deadline_s: float = 30.0,
    period_s: float = 0.1,
    timeout_s: float = 1.0,
    failure_threshold: int = 2,
) -> dict[str, Any]:
    """A long-running workload with ``probe``; no restarts (a probe failure must never restart it)."""
    document = desired(execution_id, command=sleeper(), window_s=window_s)
    document["spec"]["validation"]["deadline_s"] = deadline_s
    document["spec"]["probe"] = {
        **probe,
        "period_s": period_s,
        "timeout_s": timeout_s,
        "failure_threshold": failure_threshold,
    }
    return document


def assert_stable_once(documents: list[dict[str, Any]], stable_at: str) -> None:
    """``stable_at`` is null until the first `running`, then set once and never changed."""
    first = next(i for i, d in enumerate(documents) if state(d) == "running")
    assert all(d["stable_at"] is None for d in documents[:first])
    assert all(d["stable_at"] == stable_at for d in documents[first:])


class HttpTarget:
    """A tiny HTTP/1.0 responder whose answer the test sets; it logs every request it gets.

    Modes: ``ok`` (200), ``redirect`` (302, also healthy), ``bad`` (500), ``slow`` (holds the request
    far past the probe's timeout) and ``split`` (a 200 whose status line comes in two TCP segments). ``plan`` answers the next requests first, in order, then ``mode``.
    """

    STATUS: ClassVar[dict[str, str]] = {
        "ok": "200 OK",
        "redirect": "302 Found",
        "bad": "500 Internal Server Error",
        "slow": "200 OK",
        "split": "200 OK",
    }

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.plan: deque[str] = deque()
        self.requests: list[tuple[float, str]] = []  # (wall-clock arrival, mode answered)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    async def __aenter__(self) -> HttpTarget:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def count(self, mode: str, since: int = 0) -> int:
        return sum(1 for _, m in self.requests[since:] if m == mode)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(5):
                await reader.readuntil(b"\r\n\r\n")
            mode = self.plan.popleft() if self.plan else self.mode
            self.requests.append((time.time(), mode))
            if mode == "slow":
                await asyncio.sleep(10)  # the probe gives up long before: this is what is tested
            status = self.STATUS[mode]
            body = status.encode()
            response = (
                f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\nLocation: /elsewhere\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            if mode == "split":  # valid HTTP in two TCP segments, well within the probe's timeout
                writer.write(response[:10])  # b"HTTP/1.0 2"
                await writer.drain()
                await asyncio.sleep(0.2)
                response = response[10:]
            writer.write(response)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


# --- (a) http -----------------------------------------------------------------------------------------------


async def test_http_probe_gates_stability_and_degrades_after_failure_threshold(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    window = 1.0
    log = StatusLog(watching, NODE, "web")
    async with HttpTarget("bad") as target, running_agent(config_for(broker, state_dir)):
        document = probed(
            "web", {"http": {"url": target.url}}, window_s=window, timeout_s=0.3, failure_threshold=3
        )
        await watching.publish(desired_topic(NODE, "web"), document, retain=True)
        validating = await log.wait_state("validating", timeout=WAIT)
        pid = pid_of(validating)

        # Failing checks: the workload is up, but it stays validating and is not stable.
        await wait_until(lambda: target.count("bad") >= 5, WAIT, what="5 failed checks (500)")
        assert log.states()[-1] == "validating"
        assert all(d["stable_at"] is None for d in log.documents())

        # A pass starts the window, a slow answer (past timeout_s) is a failure that restarts it.
        target.plan.extend(["ok", "slow"])
        target.mode = "ok"
        running = await log.wait_state("running", timeout=WAIT)
        stable_at = running["stable_at"]
        assert stable_at is not None
        answered = [m for _, m in target.requests]
        slow = answered.index("slow")
        assert answered[slow - 1] == "ok"
        assert "ok" in answered[slow + 1 :]
        first_pass = target.requests[slow - 1][0]
        pass_after_slow = next(t for t, m in target.requests[slow + 1 :] if m == "ok")
        # Stable a full window after the first pass that FOLLOWED the failure, not after the first pass.
        assert ts(stable_at) >= pass_after_slow + window - TOLERANCE
        assert ts(stable_at) >= first_pass + window + 0.3 - TOLERANCE
        assert "degraded" not in log.states()

        # Failures that are not consecutive never add up to failure_threshold (3): a pass resets the count.
        since = len(target.requests)
        target.plan.extend(["bad", "bad", "ok", "bad", "bad", "ok"])
        await wait_until(lambda: len(target.requests) >= since + 8, WAIT, what="intermittent failures")

        # Stable, then unhealthy: running through failures 1 and 2, degraded at the third.
        since = len(target.requests)
        target.mode = "bad"
        degraded = await log.wait_state("degraded", timeout=WAIT)
        bad_times = [t for t, m in target.requests[since:] if m == "bad"]
        assert len(bad_times) >= 3
        assert ts(degraded["updated_at"]) >= bad_times[2] - TOLERANCE
        assert "probe failed 3 times in a row" in message(degraded)
        assert "500" in message(degraded)
        assert degraded["observed_state"]["details"] == {}  # not a crash: no restart is pending

        # Healthy again (a 3xx is healthy): running at the next pass.
        mark = watching.mark()
        target.mode = "redirect"
        recovered = await log.wait_state("running", timeout=WAIT, after=mark)
        assert message(recovered) == "probe passing again"
        assert target.count("redirect") >= 1

    states = log.states()
    assert states == ["pending", "starting", "validating", "running", "degraded", "running"]
    assert_stable_once(log.documents(), stable_at)
    # Probe failures never touch the workload itself.
    assert pid_of(recovered) == pid
    assert recovered["restart_count"] == 0


async def test_http_probe_reads_a_status_line_split_across_segments(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    log = StatusLog(watching, NODE, "split")
    async with HttpTarget("split") as target, running_agent(config_for(broker, state_dir)):
        document = probed("split", {"http": {"url": target.url}}, window_s=0.5, deadline_s=4.0)
        await watching.publish(desired_topic(NODE, "split"), document, retain=True)
        # Bounded either way: running when the 200s count, failed at the deadline when they do not.
        settled = await log.wait(lambda d: state(d) in ("running", "failed"), WAIT, "running or failed")
    assert target.count("split") >= 1
    assert state(settled) == "running", message(settled)


# --- (b) exec -----------------------------------------------------------------------------------------------


async def test_exec_probe_runs_argv_without_a_shell_and_follows_a_file(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    window = 0.5
    # A name a shell would mangle: with a shell this check could not pass.
    healthy = tmp_path / "health dir" / "ok $HOME; exit 0 *"
    healthy.parent.mkdir()
    check = {"exec": {"command": ["test", "-f", str(healthy)]}}
    main = StatusLog(watching, NODE, "exec-main")
    sibling = StatusLog(watching, NODE, "exec-deadline")
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(
            desired_topic(NODE, "exec-main"), probed("exec-main", check, window_s=window), retain=True
        )
        await watching.publish(
            desired_topic(NODE, "exec-deadline"),
            probed("exec-deadline", check, window_s=window, deadline_s=1.5),
            retain=True,
        )
        await main.wait_state("validating", timeout=WAIT)
        # The file is missing: the sibling fails its deadline, and the main one is still not stable.
        failed = await sibling.wait_state("failed", timeout=WAIT)
        assert "validation failed" in message(failed)
        assert failed["stable_at"] is None
        assert "running" not in sibling.states()
        assert main.states()[-1] == "validating"
        assert all(d["stable_at"] is None for d in main.documents())

        created = time.time()
        healthy.touch()
        running = await main.wait_state("running", timeout=WAIT)
        stable_at = running["stable_at"]
        assert ts(stable_at) >= created + window - TOLERANCE

        healthy.unlink()
        degraded = await main.wait_state("degraded", timeout=WAIT)
        assert "probe failed 2 times in a row" in message(degraded)
        assert "exit code 1" in message(degraded)

        mark = watching.mark()
        healthy.touch()
        recovered = await main.wait_state("running", timeout=WAIT, after=mark)
        assert message(recovered) == "probe passing again"

    assert main.states() == ["pending", "starting", "validating", "running", "degraded", "running"]
    assert_stable_once(main.documents(), stable_at)
    assert pid_of(recovered) == pid_of(running)
    assert recovered["restart_count"] == 0


# --- (c) tcp ------------------------------------------------------------------------------------------------


async def test_tcp_probe_follows_a_port_the_test_opens_and_closes(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    window = 0.5
    port = free_port()  # closed until the test listens on it
    connections: list[float] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(time.time())
        writer.close()

    check = {"tcp": {"host": "127.0.0.1", "port": port}}
    main = StatusLog(watching, NODE, "tcp-main")
    sibling = StatusLog(watching, NODE, "tcp-deadline")
    server: asyncio.Server | None = None
    try:
        async with running_agent(config_for(broker, state_dir)):
            await watching.publish(
                desired_topic(NODE, "tcp-main"), probed("tcp-main", check, window_s=window), retain=True
            )
            await watching.publish(
                desired_topic(NODE, "tcp-deadline"),
                probed("tcp-deadline", check, window_s=window, deadline_s=1.5),
                retain=True,
            )
            await main.wait_state("validating", timeout=WAIT)
            failed = await sibling.wait_state("failed", timeout=WAIT)
            assert "validation failed" in message(failed)
            assert failed["stable_at"] is None
            assert main.states()[-1] == "validating"
            assert all(d["stable_at"] is None for d in main.documents())

            opened = time.time()
            server = await asyncio.start_server(accept, "127.0.0.1", port)
            running = await main.wait_state("running", timeout=WAIT)
            stable_at = running["stable_at"]
            assert ts(stable_at) >= opened + window - TOLERANCE
            assert connections
            assert connections[0] >= opened

            server.close()
            await server.wait_closed()
            server = None
            degraded = await main.wait_state("degraded", timeout=WAIT)
            assert "probe failed 2 times in a row" in message(degraded)
            assert f"127.0.0.1:{port}" in message(degraded)

            mark = watching.mark()
            before = len(connections)
            server = await asyncio.start_server(accept, "127.0.0.1", port)
            recovered = await main.wait_state("running", timeout=WAIT, after=mark)
            assert message(recovered) == "probe passing again"
            assert len(connections) > before
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()

    assert main.states() == ["pending", "starting", "validating", "running", "degraded", "running"]
    assert_stable_once(main.documents(), stable_at)
    assert pid_of(recovered) == pid_of(running)


# --- (d) a hanging exec probe -------------------------------------------------------------------------------


async def test_a_hanging_exec_probe_is_killed_at_its_timeout_and_counts_as_a_failure(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "probe-pids"  # every check appends its pid: a check counter, and what must be gone
    hang = tmp_path / "hang"  # while this exists, a check hangs (on a sleep 30) instead of passing
    # A hung check leaves a child behind (its pid is recorded too): the whole group must be killed.
    script = f'echo $$ >> "{pids}"; if [ -f "{hang}" ]; then sleep 30 & echo $! >> "{pids}"; wait; fi; exit 0'
    check = {"exec": {"command": ["sh", "-c", script]}}

    def checks() -> list[int]:
        return [int(line) for line in pids.read_text().split()] if pids.exists() else []

    log = StatusLog(watching, NODE, "hung")
    try:
        async with running_agent(config_for(broker, state_dir)):
            document = probed("hung", check, window_s=0.5, timeout_s=0.4, failure_threshold=2)
            await watching.publish(desired_topic(NODE, "hung"), document, retain=True)
            running = await log.wait_state("running", timeout=WAIT)
            stable_at = running["stable_at"]

            before = len(checks())
            hung_at = time.time()
            hang.touch()
            degraded = await log.wait_state("degraded", timeout=WAIT)
            assert "probe failed 2 times in a row" in message(degraded)
            assert "timed out after 0.4 s" in message(degraded)
            # Two checks of 0.4 s each had to time out first (and far less than the 30 s they would take).
            assert ts(degraded["updated_at"]) - hung_at >= 2 * 0.4 * 0.8
            hanging = checks()[before:]
            assert len(hanging) >= 2

            mark = watching.mark()
            hang.unlink()
            recovered = await log.wait_state("running", timeout=WAIT, after=mark)
            assert message(recovered) == "probe passing again"
            # Checks run one after another, so by the pass every hung check before it was killed.
            assert not [pid for pid in hanging if pid_alive(pid)]
    finally:
        for pid in checks():  # only a check still hanging, never a recycled pid
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00":
                    os.kill(pid, signal.SIGKILL)

    assert log.states() == ["pending", "starting", "validating", "running", "degraded", "running"]
    assert_stable_once(log.documents(), stable_at)

"""Probes: each running workload's health check, run on its period, reported to the runtime as events.

The checks never block the event loop: http and tcp are asyncio (httpx for http), exec runs in a small
thread pool of its own so slow probes cannot starve spawns. A probe reports every result; the lifecycle
core decides what it means, and an unchanged state costs nothing (no commit, no publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from agent.core.events import Event, ProbeResult
from agent.core.model import Absent, Execution
from agent.protocol import Probe

PROBED_STATES = ("validating", "running", "degraded")
EXEC_THREADS = 4


class Prober:
    def __init__(
        self,
        submit: Callable[[str, Event], None],
        background: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
    ) -> None:
        self._submit = submit
        self._background = background
        self._running: dict[str, tuple[int, asyncio.Task[None]]] = {}  # execution -> (attempt, task)
        self._http: httpx.AsyncClient | None = None
        self._threads = ThreadPoolExecutor(EXEC_THREADS, thread_name_prefix="exec-probe")

    def sync(self, state: Execution | Absent) -> None:
        """Run the probe of ``state``'s current attempt if it should be probed, and no other."""
        execution_id = state.execution_id
        wanted = _wanted(state)
        current = self._running.get(execution_id)
        if current is not None and (wanted is None or current[0] != wanted[0]):
            current[1].cancel()
            del self._running[execution_id]
            current = None
        if wanted is not None and current is None:
            attempt, probe = wanted
            task = self._background(
                self._loop(execution_id, attempt, probe), f"probe:{execution_id}:{attempt}"
            )
            self._running[execution_id] = (attempt, task)

    async def close(self) -> None:
        for _, task in self._running.values():
            task.cancel()
        self._running.clear()
        if self._http is not None:
            await self._http.aclose()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _loop(self, execution_id: str, attempt: int, probe: Probe) -> None:
        while True:
            ok, detail = await self.check(probe)
            self._submit(execution_id, ProbeResult(attempt, ok, detail))
            await asyncio.sleep(probe.period_s)

    async def check(self, probe: Probe) -> tuple[bool, str]:
        """One check: (healthy, what was seen). Never raises."""
        try:
            if probe.http is not None:
                return await self._check_http(probe.http.url, probe.timeout_s)
            if probe.tcp is not None:
                return await self._check_tcp(probe.tcp.host, probe.tcp.port, probe.timeout_s)
            if probe.exec is not None:
                loop = asyncio.get_running_loop()
                command = probe.exec.command
                return await loop.run_in_executor(self._threads, _run_exec, command, probe.timeout_s)
        except Exception as exc:  # a probe must report, whatever went wrong with it
            return False, f"probe error: {exc!r}"
        return False, "no probe configured"

    async def _check_http(self, url: str, timeout_s: float) -> tuple[bool, str]:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False)
        try:
            response = await self._http.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return False, f"GET {url}: {type(exc).__name__}: {exc}"
        return 200 <= response.status_code < 400, f"GET {url}: {response.status_code}"

    @staticmethod
    async def _check_tcp(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            return False, f"tcp {host}:{port}: {type(exc).__name__}: {exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, f"tcp {host}:{port}: connected"


def _wanted(state: Execution | Absent) -> tuple[int, Probe] | None:
    """The attempt and probe to run for ``state``, if its workload runs and has a probe."""
    if not isinstance(state, Execution) or state.state_type not in PROBED_STATES:
        return None
    if state.process is None or state.spec is None or state.spec.probe is None:
        return None
    return state.process.attempt, state.spec.probe


def _run_exec(command: list[str], timeout_s: float) -> tuple[bool, str]:
    """Run an exec probe in its own process group, killed as a whole at the timeout."""
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"exec {command[0]}: {exc}"
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False, f"exec {command[0]}: timed out after {timeout_s} s"
    return code == 0, f"exec {command[0]}: exit code {code}"

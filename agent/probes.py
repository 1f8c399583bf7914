"""Probes: each running workload's health check, run on its period, reported to the runtime as events.

The checks never block the event loop: http and tcp are asyncio, exec runs in a small thread pool of
its own so slow probes cannot starve spawns. Plain ``http://`` is checked with a few lines of HTTP/1.1
on asyncio streams (status line only): measured here, httpx costs 1.0-2.3 ms of CPU per check against
0.2 ms, which at 500 workloads every 2 s is a quarter of a core instead of a few percent
(bench/README.md). ``https://`` goes through httpx, where the TLS handshake dominates anyway.

Owns running the checks. It may not touch the store or decide: a result goes to the runtime's inbox as a
:class:`ProbeResult`, and the runtime says which executions are probed (``sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.core.events import Event, ProbeResult
from agent.core.model import Absent, Execution
from agent.core.validation import probed
from agent.protocol import Probe

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
        last_ok: bool | None = None
        while True:
            ok, detail = await self.check(probe)
            # A pass after a pass changes nothing in the core (it is the steady state of a healthy fleet),
            # so only the first pass, every failure and the first pass after failures are reported.
            if not (ok and last_ok):
                self._submit(execution_id, ProbeResult(attempt, ok, detail))
            last_ok = ok
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
        try:
            if urlsplit(url).scheme == "http":
                status = await _plain_http_status(url, timeout_s)
            else:
                if self._http is None:
                    self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
                status = (await self._http.get(url, timeout=timeout_s)).status_code
        except (OSError, TimeoutError, ValueError, httpx.HTTPError) as exc:
            return False, f"GET {url}: {type(exc).__name__}: {exc}"
        return 200 <= status < 400, f"GET {url}: {status}"

    @staticmethod
    async def _check_tcp(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(timeout_s), _connected(host, port):
                pass
        except (OSError, TimeoutError) as exc:
            return False, f"tcp {host}:{port}: {type(exc).__name__}: {exc}"
        return True, f"tcp {host}:{port}: connected"


async def _plain_http_status(url: str, timeout_s: float) -> int:
    """The status code of ``GET url`` over plain HTTP/1.1; the body is never read."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError("no host in the URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: reconcile-agent-probe\r\n"
        "Connection: close\r\n\r\n"
    )
    async with asyncio.timeout(timeout_s), _connected(parts.hostname, parts.port or 80) as sock:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, request.encode())
        status_line = b""
        # A server may split its answer anywhere: read until the status line is whole (or 64 bytes, or EOF).
        while b"\r\n" not in status_line and len(status_line) < 64:
            chunk = await loop.sock_recv(sock, 64 - len(status_line))
            if not chunk:
                break
            status_line += chunk
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not (version.startswith("HTTP/") and rest[:3].isdigit() and rest[3:4] in (" ", "\r")):
        raise ValueError(f"not an HTTP response: {status_line[:40]!r}")
    return int(rest[:3])


@contextlib.asynccontextmanager
async def _connected(host: str, port: int) -> AsyncIterator[socket.socket]:
    """A connected non-blocking socket, closed on the way out: half the CPU of asyncio streams."""
    loop = asyncio.get_running_loop()
    address: tuple[Any, ...]
    try:  # an address needs no resolver (getaddrinfo runs in a thread: most of a check's cost)
        ip = ipaddress.ip_address(host)
        family, address = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host, port)
    except ValueError:
        family, _, _, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        yield sock
    finally:
        sock.close()


def _wanted(state: Execution | Absent) -> tuple[int, Probe] | None:
    """The attempt and probe to run for ``state``, if its workload runs and has a probe (the core says)."""
    return probed(state) if isinstance(state, Execution) else None


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

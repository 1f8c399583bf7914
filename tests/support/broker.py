"""A real MQTT broker on a free loopback port, in a subprocess that tests can stop, kill and restart.

mosquitto is used when it is installed; otherwise (or when ``RECONCILE_TEST_BROKER=amqtt``) the embedded
amqtt broker runs in a subprocess (``python -m tests.support.amqtt_broker``) so it can be killed and
restarted exactly like mosquitto.

Both keep retained messages across a restart (and across a SIGKILL once they are on disk, see
``wait_persisted``). Only mosquitto also persists sessions and queued QoS 1 messages of persistent
clients; tests that rely on that should skip when ``broker.kind == "amqtt"``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from tests.support.programs import PROGRAMS
from tests.support.wait import wait_until_sync

BrokerKind = Literal["mosquitto", "amqtt"]

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_KIND = "RECONCILE_TEST_BROKER"
ENV_MOSQUITTO = "RECONCILE_MOSQUITTO"  # explicit path to the mosquitto binary (set by scripts/test.sh)

# file names inside the broker's data directory
MOSQUITTO_DB = "mosquitto.db"
AMQTT_DB = "amqtt-retained.json"


class BrokerError(RuntimeError):
    """The broker could not be started or did not become ready."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: $RECONCILE_MOSQUITTO, then PATH and the sbin directories."""
    explicit = os.environ.get(ENV_MOSQUITTO)
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    return PROGRAMS["mosquitto"].path()


@functools.cache
def mosquitto_version(path: str) -> str:
    """The version mosquitto reports (``mosquitto -h`` prints it on its first line), or "unknown"."""
    try:
        out = subprocess.run(
            [path, "-h"], capture_output=True, text=True, timeout=10, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for word_list in (line.split() for line in (out.stdout + out.stderr).splitlines()):
        if len(word_list) >= 3 and word_list[:2] == ["mosquitto", "version"]:
            return word_list[2]
    return "unknown"


def resolve_kind() -> BrokerKind:
    """Which broker the tests use: $RECONCILE_TEST_BROKER if set, else mosquitto when it is installed."""
    wanted = os.environ.get(ENV_KIND, "").strip().lower()
    if wanted == "amqtt":
        return "amqtt"
    if wanted == "mosquitto":
        if find_mosquitto() is None:
            raise BrokerError(f"{ENV_KIND}=mosquitto but no mosquitto binary was found")
        return "mosquitto"
    if wanted:
        raise BrokerError(f"{ENV_KIND}={wanted!r}: expected 'mosquitto' or 'amqtt'")
    return "mosquitto" if find_mosquitto() is not None else "amqtt"


def describe_kind() -> str:
    """The broker the tests use, e.g. ``mosquitto 2.0.11`` or ``amqtt (embedded fallback)``."""
    try:
        kind = resolve_kind()
    except BrokerError as exc:
        return f"misconfigured ({exc})"
    if kind == "amqtt":
        return "amqtt (embedded fallback)"
    path = find_mosquitto()
    assert path is not None
    return f"mosquitto {mosquitto_version(path)}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One broker process bound to ``host:port``; the port and data directory survive restarts.

    Synchronous API (``start``, ``stop``, ``kill``, ``restart``, ``wait_ready``) plus ``a*`` twins that
    run the same in a worker thread so an event loop under test keeps running meanwhile.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        kind: BrokerKind | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        tcp_nodelay: bool = True,
        stock: bool = False,
        save_each_change: bool = True,
    ) -> None:
        self.tcp_nodelay = tcp_nodelay
        # False: mosquitto saves once a second instead, for a test that never kills it but moves thousands of
        # messages (a save of the whole database per change lets through some 25 a second with 4000 retained).
        self.save_each_change = save_each_change
        self.stock = stock  # mosquitto as most users run it: its defaults, a listener and a log only
        self.kind: BrokerKind = kind or resolve_kind()
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_port(host)
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix=f"broker-{self.kind}-")) if data_dir is None else data_dir
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.starts = 0  # how many times the broker was started successfully
        self._mosquitto = find_mosquitto() if self.kind == "mosquitto" else None
        if self.kind == "mosquitto" and self._mosquitto is None:
            raise BrokerError("mosquitto requested but not found")

    # ------------------------------------------------------------------ info
    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def version(self) -> str:
        if self.kind == "mosquitto":
            assert self._mosquitto is not None
            return mosquitto_version(self._mosquitto)
        return "amqtt (embedded fallback)"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The broker's own log (mosquitto's log file; for amqtt its stdout and stderr)."""
        return self.data_dir / ("mosquitto.log" if self.kind == "mosquitto" else "broker.out")

    @property
    def db_path(self) -> Path:
        """Where the broker persists retained messages."""
        return self.data_dir / (MOSQUITTO_DB if self.kind == "mosquitto" else AMQTT_DB)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in dict.fromkeys((self.log_path, self.data_dir / "broker.out")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"Broker(kind={self.kind!r}, {self.host}:{self.port}, pid={self.pid}, dir={self.data_dir})"

    # -------------------------------------------------------------- lifecycle
    def _write_mosquitto_conf(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Off, small packets wait up to 40 ms for a delayed TCP ACK (bench/README.md).
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"persistence_file {MOSQUITTO_DB}",
            # with autosave_on_changes the interval counts changes (retained messages, subscriptions,
            # queued messages), so 1 means: save after every change. A SIGKILL then loses at most the
            # change being processed, not the last 30 minutes (the default is a 1800 s timer).
            "autosave_interval 1",
            f"autosave_on_changes {'true' if self.save_each_change else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "max_queued_messages 100000",
        ]
        if self.stock:  # no persistence, Nagle on, queues of 1000 + 20 in flight
            lines = [*lines[:2], f"log_dest file {self.log_path}"]
        if os.geteuid() == 0:
            lines.append(
                "user root"
            )  # as root mosquitto would otherwise drop to `mosquitto` and lose the dir
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            assert self._mosquitto is not None
            return [self._mosquitto, "-c", str(self._write_mosquitto_conf())]
        return [
            sys.executable,
            "-m",
            "tests.support.amqtt_broker",
            str(self.port),
            str(self.data_dir),
            self.host,
        ]

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker (no-op if running) and wait until it accepts TCP connections.

        On the very first start of an automatically chosen port, a port that another process grabbed
        between ``free_port()`` and the broker's bind is replaced by a fresh one (up to 3 tries).
        """
        if self.running:
            return
        attempts = 3 if self._auto_port and self.starts == 0 else 1
        for attempt in range(1, attempts + 1):
            try:
                if _port_open(self.host, self.port):
                    raise BrokerError(f"port {self.host}:{self.port} is already taken by another process")
                self._spawn()
                self.wait_ready(timeout)
            except BrokerError as exc:
                self._end(signal.SIGKILL, 10.0)
                if attempt == attempts:
                    raise
                try:
                    self.port = free_port(self.host)
                except OSError:
                    raise exc from None
            else:
                self.starts += 1
                return

    def _spawn(self) -> None:
        self._close_out()
        self._out = (self.data_dir / "broker.out").open("ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            self._command(),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach the broker before teardown
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll a TCP connect until the broker accepts, failing early if the process died."""

        def ready() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerError(f"{self!r} exited with {code} before accepting\n{self.log_tail()}")
            return _port_open(self.host, self.port)

        try:
            wait_until_sync(
                ready, timeout=timeout, interval=0.01, what=f"{self.kind} accepting on {self.port}"
            )
        except AssertionError as exc:
            raise BrokerError(f"{exc}\n{self.log_tail()}") from exc

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (a clean shutdown: mosquitto saves its database). Returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash. Only what the broker had already written to disk survives."""
        return self._end(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 15.0) -> None:
        """Clean stop, then start on the same port with the same persistence directory."""
        self.stop()
        self.start(timeout)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._proc = None
        self._close_out()
        return proc.returncode

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def close(self) -> None:
        """Stop the broker and remove its data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------ async twins
    async def astart(self, timeout: float = 15.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 10.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> int | None:
        return await asyncio.to_thread(self.kill)

    async def arestart(self, timeout: float = 15.0) -> None:
        await asyncio.to_thread(self.restart, timeout)

    # ---------------------------------------------------------- persistence
    def persisted(self, marker: bytes) -> bool:
        """True once ``marker`` (e.g. a retained payload) is in the broker's on-disk database."""
        try:
            raw = self.db_path.read_bytes()
        except FileNotFoundError:
            return False
        if self.kind == "mosquitto":
            return marker in raw  # payloads are stored verbatim in mosquitto.db
        records = json.loads(raw)
        return any(
            marker in base64.b64decode(rec["data"]) or marker in rec["topic"].encode() for rec in records
        )

    def wait_persisted(self, marker: bytes, timeout: float = 10.0) -> None:
        """Wait until ``marker`` is on disk, so a ``kill()`` from now on cannot lose it."""
        wait_until_sync(
            lambda: self.persisted(marker), timeout=timeout, what=f"{marker!r} in {self.kind} database"
        )

"""A stand-in for systemd's notify socket: a real unix datagram socket that records what it receives."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

# sun_path holds 108 bytes with its NUL; pytest's tmp_path can be longer than that.
_MAX_PATH = 100


@dataclass(frozen=True)
class Notification:
    at: float  # time.monotonic() when it was received
    wall: float  # time.time() when it was received, to compare with the agent's log timestamps
    fields: dict[str, str]

    def __contains__(self, assignment: str) -> bool:
        key, _, value = assignment.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    """Bound to a path (or an abstract name when ``abstract``); ``address`` is what NOTIFY_SOCKET says."""

    def __init__(self, directory: Path, *, abstract: bool = False) -> None:
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"reconcile-agent-test-{id(self):x}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / "notify.sock"
            if len(str(path)) > _MAX_PATH:
                self._tempdir = tempfile.TemporaryDirectory(prefix="notify-")
                path = Path(self._tempdir.name) / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.received: list[Notification] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()
        if self._tempdir is not None:
            with contextlib.suppress(OSError):
                self._tempdir.cleanup()

    def receive(self, timeout: float) -> Notification | None:
        """The next datagram, or None when none came within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        note = Notification(time.monotonic(), time.time(), fields)
        self.received.append(note)
        return note

    def wait_for(self, assignment: str, timeout: float = 10.0) -> Notification:
        """Receive until a datagram holds ``assignment`` (e.g. ``READY=1``); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            note = self.receive(left)
            if note is not None and assignment in note:
                return note
        seen = [n.fields for n in self.received[-5:]]
        raise AssertionError(f"no {assignment} within {timeout:.1f}s (last received: {seen})")

    def pings(self, count: int, timeout: float = 10.0) -> list[float]:
        """Times of the next ``count`` WATCHDOG=1 datagrams."""
        return [self.wait_for("WATCHDOG=1", timeout).at for _ in range(count)]

"""systemd integration: sd_notify (READY, STOPPING, STATUS, WATCHDOG) over the datagram socket in $NOTIFY_SOCKET.

The protocol is a few lines of text in one datagram (``man sd_notify``), so it is written here rather than
taken from a dependency. Every send is best effort: a notification that cannot be delivered is logged
once and dropped, never raised, because losing systemd must not take the agent down with it.

The watchdog pings are sent by a task of the agent's own event loop and paced by ``asyncio.sleep``: a loop
that is blocked (a stuck callback, a synchronous call that hangs) stops pinging, and systemd restarts the
agent after ``WatchdogSec=``. A thread would keep pinging for a dead loop, which is why there is none.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("agent.systemd")

# What the service manager shows in `systemctl status` once the agent is up.
READY_STATUS = "running"


class SystemdNotifier:
    """Sends sd_notify messages to one notify socket; make it with :meth:`from_environment`."""

    def __init__(self, address: str, watchdog_usec: int | None = None, pid: int | None = None) -> None:
        """``address`` as in $NOTIFY_SOCKET (a path, or ``@name`` for the abstract namespace);
        ``watchdog_usec`` as in $WATCHDOG_USEC, None for no watchdog; ``pid`` the pid sent as MAINPID."""
        # A leading "@" is how systemd writes an abstract socket name, whose first byte is really NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self.pid = os.getpid() if pid is None else pid
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Non-blocking: a datagram to a full receive queue would otherwise block the event loop.
        self._sock.setblocking(False)
        self._failing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier when started by systemd with Type=notify ($NOTIFY_SOCKET set), else None.

        The watchdog is on when $WATCHDOG_USEC is a positive integer and $WATCHDOG_PID is unset or our
        own pid (systemd sets it to the main pid; a child that inherited the variables must not ping).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        if not address.startswith(("/", "@")):
            # vsock: and other transports of newer systemd are for VMs and containers, not for a node agent.
            log.warning("NOTIFY_SOCKET is not a unix socket, not notifying systemd", notify_socket=address)
            return None
        return cls(address, watchdog_usec=_watchdog_usec(env), pid=os.getpid())

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str = READY_STATUS) -> None:
        """READY=1: the store is open and the first connection attempt was made."""
        self.notify(f"READY=1\nSTATUS={_one_line(status)}\nMAINPID={self.pid}")

    def stopping(self) -> None:
        """STOPPING=1: a clean shutdown has begun."""
        self.notify("STOPPING=1\nSTATUS=stopping")

    def status(self, text: str) -> None:
        """STATUS=: one free-form line shown by `systemctl status`."""
        self.notify(f"STATUS={_one_line(text)}")

    async def watchdog_forever(self) -> None:
        """WATCHDOG=1 every half of $WATCHDOG_USEC, sent from the event loop itself; if off, just waits.

        Never returns: the daemon runs it as a TaskGroup task and cancels it at shutdown.
        """
        interval = self.watchdog_interval
        if interval is None:
            await asyncio.Event().wait()
            return
        log.debug("watchdog on", interval_s=interval)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def notify(self, message: str) -> bool:
        """Send one message; True if it was handed to the socket. Never raises."""
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            # Once per run of failures: a vanished socket would otherwise log every watchdog interval.
            if not self._failing:
                log.warning("cannot notify systemd", notify_socket=self._shown_address, error=str(exc))
                self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd again", notify_socket=self._shown_address)
            self._failing = False
        return True

    def close(self) -> None:
        self._sock.close()

    @property
    def _shown_address(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None  # meant for another process (we inherited our parent's environment)
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("WATCHDOG_USEC is not a positive integer, watchdog off", watchdog_usec=raw)
        return None
    return usec


def _one_line(text: str) -> str:
    # Each line of a notification is one assignment: a newline in a status would start a bogus one.
    return " ".join(text.splitlines())

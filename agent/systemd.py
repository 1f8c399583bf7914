"""systemd integration: sd_notify (READY, STOPPING, WATCHDOG) over the datagram socket in $NOTIFY_SOCKET.

To be completed (issue #6): this stub is the interface the daemon uses.
"""

from __future__ import annotations

import asyncio


class SystemdNotifier:
    @classmethod
    def from_environment(cls) -> SystemdNotifier | None:
        """A notifier when started by systemd with Type=notify ($NOTIFY_SOCKET set), else None."""
        return None

    def ready(self) -> None:
        """READY=1: the store is open and the first connection attempt was made."""

    def stopping(self) -> None:
        """STOPPING=1: a clean shutdown has begun."""

    async def watchdog_forever(self) -> None:
        """WATCHDOG=1 every half of $WATCHDOG_USEC, sent from the event loop itself; if off, just waits."""
        await asyncio.Event().wait()

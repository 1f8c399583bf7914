"""The embedded amqtt broker as a standalone process, the fallback when mosquitto is not installed.

Usage: ``python -m tests.support.amqtt_broker PORT DATA_DIR [HOST]`` (run from the repository root).

Running it in its own process lets the tests SIGTERM, SIGKILL and restart it just like mosquitto.
amqtt itself keeps everything in memory; to match the mosquitto test config (persistence on, autosave on
every change) this wrapper writes the retained messages to ``DATA_DIR/amqtt-retained.json`` on every
change (temp file + rename) and loads them before the listener opens. Sessions and queued messages of
persistent clients are NOT persisted (mosquitto does persist them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.session import Session

RETAINED_FILE = "amqtt-retained.json"
log = logging.getLogger("amqtt_broker")


class PersistentRetainBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """An amqtt broker whose retained messages survive a restart or a SIGKILL (once written)."""

    def __init__(self, config: dict[str, Any], data_dir: Path) -> None:
        super().__init__(config)
        self._retained_file = data_dir / RETAINED_FILE

    def _save_retained(self) -> None:
        records = [
            {"topic": topic, "data": base64.b64encode(bytes(msg.data)).decode(), "qos": msg.qos}
            for topic, msg in self._retained_messages.items()
        ]
        tmp = self._retained_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(records))
        os.replace(tmp, self._retained_file)

    def _load_retained(self) -> None:
        try:
            records = json.loads(self._retained_file.read_text())
        except FileNotFoundError:
            return
        for rec in records:
            data = base64.b64decode(rec["data"])
            self._retained_messages[rec["topic"]] = RetainedApplicationMessage(
                None, rec["topic"], data, rec["qos"]
            )
        log.info("loaded %d retained messages from %s", len(records), self._retained_file)

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        await super().retain_message(source_session, topic_name, data, qos)
        self._save_retained()

    async def _start_listeners(self) -> None:
        # Broker.start() clears the retained messages first; load ours before any client can connect.
        self._load_retained()
        await super()._start_listeners()


async def serve(port: int, data_dir: Path, host: str) -> None:
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = PersistentRetainBroker(config, data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    log.info("amqtt broker listening on %s:%d (data %s, pid %d)", host, port, data_dir, os.getpid())
    await stop.wait()
    log.info("shutting down")
    await broker.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m tests.support.amqtt_broker PORT DATA_DIR [HOST]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # amqtt's state machine logs every step
    # Broker.wait_ready() connects and closes without a packet: amqtt logs each such probe as
    # "No data to decode MQTT packet fixed header" (ERROR) and "Failed to initialize client session".
    data_dir = Path(argv[1])
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(int(argv[0]), data_dir, argv[2] if len(argv) == 3 else "127.0.0.1"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The embedded broker: amqtt in the agent's own event loop, for one node and for trying the agent out.

Not for a fleet: amqtt drops in-flight QoS 1 state when a client disconnects (amqtt issue #401) and
speaks MQTT 3.1.1 only. Fleets run mosquitto or a broker cluster (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

log = structlog.get_logger("agent.broker")


class BrokerStartError(Exception):
    """The embedded broker could not listen where it was configured to."""


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


@asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[None]:
    from amqtt.broker import Broker  # noqa: PLC0415  (a deployment on mosquitto never loads amqtt)

    broker = Broker(broker_config(host, port))
    try:
        await broker.start()
    except Exception as exc:  # amqtt wraps bind errors in its own exception types
        raise BrokerStartError(f"embedded broker cannot listen on {host}:{port}: {exc}") from exc
    log.warning("embedded broker started: for one node and for trying the agent out", host=host, port=port)
    try:
        yield
    finally:
        await broker.shutdown()

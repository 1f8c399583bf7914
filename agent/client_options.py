"""The options of every MQTT client of this project, the agent's and the operator CLI's alike.

A module of its own so that the CLI can use them without importing the agent's runtime and store.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import aiomqtt

TIMEOUT_S = 10.0  # connect and every acknowledged operation


def client_settings(
    *,
    host: str,
    port: int,
    client_id: str,
    keepalive_s: int,
    username: str | None,
    password: str | None,
    tls_context: ssl.SSLContext | None,
) -> dict[str, Any]:
    """Keyword arguments for ``aiomqtt.Client``: MQTT 3.1.1, which every broker speaks."""
    return {
        "hostname": host,
        "port": port,
        "identifier": client_id,
        "keepalive": keepalive_s,
        "username": username,
        "password": password,
        "tls_context": tls_context,
        "protocol": aiomqtt.ProtocolVersion.V311,
        "timeout": TIMEOUT_S,
        # Small QoS 1 packets behind an unacknowledged one wait ~40 ms for a delayed TCP ACK under Nagle:
        # measured as 38 of 48 ms from desired to validating (bench/README.md).
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }

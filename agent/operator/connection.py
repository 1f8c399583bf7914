"""Where the operator's broker is: the ``mqtt`` section of the agent's config file, or --host/--port.

The CLI connects as itself: a random client id (never the agent's, which would throw the agent off
the broker) and a clean session, since it keeps nothing between runs.
"""

from __future__ import annotations

import argparse
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.client_options import client_settings
from agent.config import AgentConfig, ConfigError, load_config
from agent.exit_codes import EXIT_USAGE
from agent.operator.documents import DEFAULT_MAX_PAYLOAD_BYTES
from agent.operator.errors import OperatorError
from agent.protocol import DEFAULT_TOPIC_PREFIX

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
KEEPALIVE_S = 30


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    prefix: str
    max_payload_bytes: int
    settings: dict[str, Any]  # aiomqtt.Client keyword arguments, client id included

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def client_id(self) -> str:
        return str(self.settings["identifier"])


def new_client_id() -> str:
    return f"reconcile-cli-{uuid.uuid4().hex[:12]}"


def resolve_target(args: argparse.Namespace) -> Target:
    """The broker and prefix from --config, then --host, --port and --topic-prefix on top."""
    config = _load(args.config) if args.config is not None else None
    mqtt = config.mqtt if config is not None else None
    host: str = args.host or (mqtt.host if mqtt else DEFAULT_HOST)
    port: int = args.port or (mqtt.port if mqtt else DEFAULT_PORT)
    prefix: str = args.topic_prefix or (mqtt.topic_prefix if mqtt else DEFAULT_TOPIC_PREFIX)
    try:
        password = config.mqtt_password() if config is not None else None
        tls = _tls_context(config) if config is not None else None
    except ConfigError as exc:
        raise OperatorError(exc.message, EXIT_USAGE) from None
    settings = client_settings(
        host=host,
        port=port,
        client_id=new_client_id(),
        keepalive_s=mqtt.keepalive_s if mqtt else KEEPALIVE_S,
        username=mqtt.username if mqtt else None,
        password=password,
        tls_context=tls,
    )
    settings["clean_session"] = True  # the CLI keeps nothing between runs
    limit = config.limits.max_payload_bytes if config is not None else DEFAULT_MAX_PAYLOAD_BYTES
    return Target(host, port, prefix, limit, settings)


def _load(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise OperatorError(exc.message, EXIT_USAGE) from None


def _tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    # Only with a tls section: without one, the agent's loader would log a plaintext-password warning
    # on stdout, into what may be JSON for a script. With one, the CLI trusts exactly what the agent does.
    if config.mqtt.tls is None:
        return None
    from agent.tls import tls_context  # noqa: PLC0415  (structlog and ssl setup only when needed)

    return tls_context(config)

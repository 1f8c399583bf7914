"""TLS towards the broker: the client context built from ``mqtt.tls``, and what ``required`` means.

- No ``mqtt.tls`` section: plaintext (the agent warns when it would send a password that way).
- A ``mqtt.tls`` section, whatever else it says: TLS 1.2 or later, the broker's certificate verified
  against ``ca_file`` (the system's trusted CAs when ``ca_file`` is not set) and its name checked against
  ``mqtt.host``; with ``cert_file`` and ``key_file`` the agent also presents a client certificate
  (mutual TLS). There is no fallback to plaintext: a failed handshake is retried like any broker outage.
- ``required: true`` is the operator's guarantee that the broker is authenticated with a CA they chose:
  the agent refuses to start (exit status 2) unless ``ca_file`` is set, and also when ``mqtt.embedded``
  is set (the embedded broker speaks plaintext only). ``RECONCILE_MQTT__TLS__REQUIRED=true`` alone, with
  no other TLS key anywhere, therefore stops the agent at startup instead of letting it connect in
  plaintext or trust any public CA.

Every file problem is a :class:`ConfigError` naming the key and the file, raised before any connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import structlog

from agent.config import AgentConfig, ConfigError, TlsConfig
from agent.reasons import os_reason

log = structlog.get_logger("agent.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class _EncryptedKey(Exception):
    """The key file wants a passphrase: the agent never prompts for one (it would hang a daemon)."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``config.mqtt``, or None for plaintext. Raises ConfigError."""
    mqtt = config.mqtt
    tls = mqtt.tls
    if tls is None:
        if mqtt.password_file is not None:
            log.warning(
                "the MQTT password is sent in plaintext: configure mqtt.tls",
                host=mqtt.host,
                port=mqtt.port,
            )
        return None
    if tls.required and tls.ca_file is None:
        raise ConfigError(
            None,
            "mqtt.tls.required is true but mqtt.tls.ca_file is not set: the agent only connects to a "
            "broker whose certificate is signed by a CA you name (set mqtt.tls.ca_file, e.g. "
            "/etc/reconcile-agent/ca.crt; for the system's CAs name their bundle, e.g. "
            "/etc/ssl/certs/ca-certificates.crt)",
        )
    if mqtt.embedded:
        raise ConfigError(
            None,
            "mqtt.tls is set but so is mqtt.embedded: the embedded broker speaks plaintext MQTT only "
            "(remove the tls section, or run mosquitto with TLS and set mqtt.embedded: false)",
        )
    return _context(tls)


def _context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and checks the host name
    context.minimum_version = MINIMUM_VERSION
    if tls.ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        _load_client_cert(context, tls.cert_file, tls.key_file)
    return context


def _load_ca(context: ssl.SSLContext, path: Path) -> None:
    _check_readable("ca_file", path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(
            path, f"mqtt.tls.ca_file: {path} holds no usable CA certificate (PEM expected): {_reason(exc)}"
        ) from exc


def _load_client_cert(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _check_readable("cert_file", cert)
    _check_readable("key_file", key)
    try:
        # A throwaway context just to tell a bad certificate file from a bad key file.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise ConfigError(
            cert, f"mqtt.tls.cert_file: {cert} holds no certificate (PEM expected): {_reason(exc)}"
        ) from exc
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            key,
            f"mqtt.tls.key_file: {key} is encrypted with a passphrase; the agent cannot prompt for one, so "
            "give it an unencrypted key readable only by its user",
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            message = f"mqtt.tls.key_file: {key} is not the key of the certificate in {cert}"
        else:
            message = f"mqtt.tls.key_file: {key} holds no usable private key (PEM expected): {_reason(exc)}"
        raise ConfigError(key, message) from exc


def _check_readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(path, f"mqtt.tls.{key}: cannot read {path}: {os_reason(exc)}") from exc


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc).lower().replace("_", " ")


def connect_hint(error: BaseException | None) -> str | None:
    """What to check, when a failed connection's error is a certificate the agent refused; else None."""
    text = str(error or "")
    if "CERTIFICATE_VERIFY_FAILED" not in text:
        return None
    if "mismatch" in text.lower():
        return "mqtt.host is not one of the names in the broker's certificate (its subjectAltName)"
    if "expired" in text:
        return "the broker's certificate has expired (or this machine's clock is wrong)"
    return "the broker's certificate is not signed by the CA in mqtt.tls.ca_file (wrong CA?)"

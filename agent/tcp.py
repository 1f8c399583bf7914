"""The agent's own TCP socket to the broker: acknowledge at once, so a broker with Nagle on never stalls.

Most brokers keep Nagle's algorithm on (mosquitto's default ``set_tcp_nodelay false``): a small packet
the broker sends while an earlier one to us is still unacknowledged is held until our TCP ACK. Linux
delays that ACK by up to 40 ms when it has nothing to piggyback it on, so every PUBACK followed by a
desired document, or two PUBACKs in a row, cost 40 ms (bench/latency.py measured 90 ms desired ->
validating on a stock mosquitto, 10 ms on one with ``set_tcp_nodelay true``). ``TCP_QUICKACK`` makes
the kernel ACK at once; it is not sticky (the kernel goes back to delayed ACKs as soon as it sees
request/response traffic, that is after our next send), so it is set again after every read and write.
``TCP_NODELAY`` (agent/client_options.py) is the other half: our own small packets go out at once.

Neither paho nor aiomqtt has a hook after each read or write, so :func:`acknowledge_at_once` wraps the
paho client's ``loop_read`` and ``loop_write`` on the instance (aiomqtt's socket callbacks call exactly
those, on the event loop's thread). On a system without ``TCP_QUICKACK`` (not Linux) it only does the
next thing: read what has arrived in one go (see :func:`_drained`).

:func:`write_at_once` (the agent's own link only) hands what the client queues on the event loop's
thread to the socket there and then, as paho does when no outside loop drives it: aiomqtt would first
register a writer one loop turn later and write on the turn after, so every status waited two turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
READ_BURST = 256  # packets read per readable event at most: the loop's other work still gets its turn


def quick_ack(sock: object) -> None:
    """Ask the kernel to acknowledge what arrives on ``sock`` at once (again); a no-op where unsupported."""
    if QUICKACK is None or not isinstance(sock, socket.socket):  # a websocket wrapper, or no socket yet
        return
    with contextlib.suppress(OSError):  # a socket closing under us: the read or write reports that
        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


def _rearmed(client: paho.Client, step: Callable[..., MQTTErrorCode]) -> Callable[..., Any]:
    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> MQTTErrorCode:
        try:
            return step(*args, **kwargs)
        finally:
            quick_ack(client.socket())

    return wrapper


def _readable(sock: object) -> bool:
    if not isinstance(sock, socket.socket):
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _drained(client: paho.Client, step: Callable[..., MQTTErrorCode]) -> Callable[..., Any]:
    """``loop_read`` reading what has arrived, READ_BURST packets at most, not one packet per turn of the
    event loop: paho reads one packet a call when nothing of ours awaits an acknowledgement, so a burst
    of desired documents would trickle in one per turn, each decided and committed on its own."""

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> MQTTErrorCode:
        code = step(*args, **kwargs)
        for _ in range(READ_BURST - 1):
            if code != MQTTErrorCode.MQTT_ERR_SUCCESS or not _readable(client.socket()):
                break
            code = step(*args, **kwargs)
        return code

    return wrapper


def acknowledge_at_once(client: aiomqtt.Client) -> aiomqtt.Client:
    """``client``, whose socket acknowledges every segment at once for as long as it is connected, and
    which reads what has arrived in one go."""
    inner: paho.Client = client._client  # aiomqtt exposes no hook of its own
    inner.loop_read = _drained(inner, inner.loop_read)  # type: ignore[method-assign]
    if QUICKACK is None:
        return client
    inner.loop_read = _rearmed(inner, inner.loop_read)  # type: ignore[method-assign]
    inner.loop_write = _rearmed(inner, inner.loop_write)  # type: ignore[method-assign]
    return client


def write_at_once(client: aiomqtt.Client) -> aiomqtt.Client:
    """``client``, whose packets queued on the event loop's thread are written at once; what the socket
    does not take then, and whatever is queued from another thread (the connect), goes the usual way."""
    inner: paho.Client = client._client  # aiomqtt exposes no hook of its own
    loop = asyncio.get_running_loop()
    deferred = inner.on_socket_register_write  # aiomqtt's: add_writer on the loop's next turn

    def register(paho_client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho's own test before it writes in place: not from inside one of its callbacks.
        if _on(loop) and paho_client._in_callback_mutex.acquire(blocking=False):
            paho_client._in_callback_mutex.release()
            # Unregisters itself when all of it went out (paho marked it registered before calling us).
            paho_client.loop_write()
            if not paho_client.want_write():
                return
        if deferred is not None:
            deferred(paho_client, userdata, sock)

    inner.on_socket_register_write = register
    return client


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread
        return False

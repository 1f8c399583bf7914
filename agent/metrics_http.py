"""The metrics endpoint: GET /metrics and GET /healthz over HTTP/1.1, on ``metrics.address``.

Owns the socket and the few lines of HTTP (a request head in, one reply out, the connection closed):
hand-written on asyncio streams because the endpoint must run on the agent's own loop, so that a
/healthz answer proves the loop is alive and the store (not thread-safe) is only read from it, and
prometheus_client's server runs in a thread of its own. What it serves comes from agent/metrics.py; it
reads nothing of the agent itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import structlog
from prometheus_client.exposition import choose_encoder

from agent.config import parse_address
from agent.metrics import Metrics

log = structlog.get_logger("agent.metrics")

BIND_RETRY_S = 30.0  # how often to try the metrics address again while it cannot be bound
REQUEST_TIMEOUT_S = 10.0  # a client has this long to send its request head
MAX_REQUEST_HEAD = 16 * 1024  # bytes of request line and headers

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_REASONS |= {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class Endpoint:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.log = log.bind(node=metrics.node_id)
        self.serving = asyncio.Event()  # set while the HTTP endpoint is listening

    async def serve(self, address: str) -> None:
        """Serve GET /metrics and GET /healthz on host:port until cancelled.

        An address that cannot be bound (in use, not local, privileged) does not stop the agent: the error
        is logged and binding is tried again every BIND_RETRY_S, while reconciliation goes on.
        """
        host, port = parse_address(address)  # the config refused a bad one when it was loaded
        last_error = None
        while True:
            try:
                server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_HEAD)
            except OSError as exc:
                error = str(exc)
                report = self.log.error if error != last_error else self.log.debug
                report(
                    "metrics: cannot listen; the agent runs on without metrics and tries again",
                    address=address,
                    error=error,
                    retry_in_s=BIND_RETRY_S,
                )
                last_error = error
                await asyncio.sleep(BIND_RETRY_S)
                continue
            break
        async with server:
            self.log.info("metrics: serving /metrics and /healthz", address=address)
            self.serving.set()
            try:
                await server.serve_forever()
            finally:
                self.serving.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                reply = _Reply.text(408, "request timeout\n")
            except asyncio.LimitOverrunError:
                reply = _Reply.text(431, "request head too large\n")
            else:
                try:
                    reply = self._respond(head)
                except Exception:
                    self.log.exception("metrics: cannot answer a request")
                    reply = _Reply.text(503, "internal error\n")
            writer.write(reply.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> _Reply:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _Reply.text(400, "bad request\n")
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return _Reply.text(404, "not found: try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            reply = _Reply.text(405, "method not allowed\n")
            reply.headers["Allow"] = "GET, HEAD"
            return reply
        if path == "/healthz":
            code, report = self._metrics.health()
            body = (json.dumps(report) + "\n").encode()
            return _Reply(code, {"Content-Type": "application/json"}, body, head_only=method == "HEAD")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return _Reply(
            200, {"Content-Type": content_type}, encoder(self._metrics.registry), head_only=method == "HEAD"
        )


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    head_only: bool = False  # a HEAD request: the headers of the GET reply, without its body

    @classmethod
    def text(cls, status: int, text: str) -> _Reply:
        return cls(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())

    def encode(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if self.head_only else self.body)

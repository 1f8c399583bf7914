"""Logs on request (PROTOCOL.md, Logs on request; docs/protocol.md for what this agent decided beyond it).

A request on ``P/nodes/N/logs/request`` gets its replies on ``P/nodes/N/logs/R``: the tail of the
current (or last) attempt's stream, then, with ``follow``, what the workload writes, until its process
ends (``eof``), ``follow_s`` passes or a cancel. The rules that keep the agent safe:

- Nothing here blocks the event loop: every file read runs on a small executor of its own (so 8 follows
  never delay a spawn, which uses the default one), and handling a request on the loop is a parse and a
  dictionary look-up.
- Memory is bounded: replies wait for the MQTT link in one bounded queue (:data:`REPLY_QUEUE`), and a
  request holds at most one reply while it waits for room. A follow whose reply finds no room for
  :data:`FOLLOW_ROOM_WAIT_S`, or that falls :data:`MAX_FOLLOW_LAG_BYTES` behind the end of the log, has a
  requester (or a link) too slow for its workload: it ends with an error reply. At most
  :data:`MAX_REQUESTS` requests are served at once, :data:`MAX_FOLLOWS` of them follows.
- Every fault is one reply with ``error`` set and ``eof: true``, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import streams
from agent.outbox import Message
from agent.protocol import (
    LogCancel,
    LogRequest,
    LogRequestRejected,
    Topics,
    dumps,
    parse_log_request,
)

log = structlog.get_logger("agent.log_service")

REPLY_DATA_BYTES = 64 * 1024  # of UTF-8 in one reply's data (PROTOCOL.md)
MAX_FOLLOWS = 8  # at once on the node (PROTOCOL.md)
MAX_REQUESTS = 32  # served at once, follows included: a flood of one-shot requests gets error replies
REPLY_QUEUE = 32  # replies waiting for the link: at most about 32 x 64 KiB of data (JSON may escape it)
POLL_S = 0.2  # how often a follow looks for new output: well within the second the contract allows
READ_THREADS = 2
ERROR_PUT_TIMEOUT_S = 10.0  # an error reply that finds no room in the queue for this long is dropped
FOLLOW_ROOM_WAIT_S = 2.0  # a follow whose reply finds no room in the queue for this long has lost it
CHUNKS_PER_LOOK = 16  # replies a follow sends before it looks at the clock, a cancel and its lag
MAX_FOLLOW_LAG_BYTES = 16 * 1024 * 1024  # a follow further behind the end of the log than this has lost it


@dataclass(frozen=True)
class LogSource:
    """What the service needs to know of an execution (from the runtime, on the loop)."""

    run_dir: Path
    attempt: int  # the current (or last) attempt; 0 if none has started yet
    running: bool  # that attempt's process is there, or being spawned


Lookup = Callable[[str], LogSource | None]


class SlowRequester(Exception):
    """The reply queue was full when a follow had something to send."""


@dataclass
class _Served:
    request: LogRequest
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0


class LogService:
    def __init__(self, topics: Topics, lookup: Lookup, max_payload: int) -> None:
        self.topics = topics
        self._lookup = lookup
        self._max_payload = max_payload
        self.replies: asyncio.Queue[Message] = asyncio.Queue(REPLY_QUEUE)  # drained by the MQTT link
        self._served: dict[str, _Served] = {}
        self._ending = 0
        self._tasks: asyncio.TaskGroup | None = None
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="log-read")
        self.log = log.bind(node=topics.node_id)

    @property
    def ending(self) -> int:
        """Requests whose last (error) reply waits for room in the queue."""
        return self._ending

    @property
    def follows(self) -> int:
        return sum(1 for s in self._served.values() if s.request.follow)

    async def run(self) -> None:
        """Serve requests until cancelled; each request is a task of this loop's TaskGroup."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await asyncio.Event().wait()  # forever: requests come through on_request
        finally:
            self._tasks = None
            self._reads.shutdown(wait=False, cancel_futures=True)

    def on_request(self, payload: bytes) -> None:
        """A payload on the request topic. Never raises, never blocks."""
        parsed = parse_log_request(payload, self._max_payload)
        if isinstance(parsed, LogRequestRejected):
            self._reject(parsed.request_id, None, None, f"bad request: {parsed.reason}")
        elif isinstance(parsed, LogCancel):
            served = self._served.get(parsed.request_id)
            if served is None or not served.request.follow:
                self._reject(parsed.request_id, None, None, "cancel: no follow with this request_id runs")
            else:
                served.cancelled.set()
        else:
            self._start(parsed)

    def _start(self, request: LogRequest) -> None:
        problem = self._refusal(request)
        if problem is not None:
            self._reject(request.request_id, request.execution_id, request.stream, problem)
            return
        source = self._lookup(request.execution_id)
        if source is None:
            self._reject(request.request_id, request.execution_id, request.stream, "unknown execution")
            return
        assert self._tasks is not None  # _refusal checked
        served = _Served(request)
        self._served[request.request_id] = served
        self._tasks.create_task(self._serve(served, source), name=f"logs:{request.request_id}")

    def _refusal(self, request: LogRequest) -> str | None:
        if self._tasks is None:
            return "the agent is not serving logs yet"
        if request.request_id in self._served:
            return f"request_id {request.request_id!r} is in use by a request still served"
        if request.follow and self.follows >= MAX_FOLLOWS:
            return f"too many follows: at most {MAX_FOLLOWS} at once on this node"
        if len(self._served) >= MAX_REQUESTS:
            return f"too many requests: at most {MAX_REQUESTS} served at once on this node"
        return None

    async def _serve(self, served: _Served, source: LogSource) -> None:
        request = served.request
        try:
            await self._stream(served, source)
        except SlowRequester as exc:
            await self._error(served, f"the requester is too slow: {exc}; follow ended")
        except Exception as exc:  # a bug or an I/O error: the requester is told, the agent goes on
            self.log.warning("cannot serve a log request", request=request.request_id, error=repr(exc))
            await self._error(served, f"cannot read the log: {exc}")
        finally:
            self._served.pop(request.request_id, None)

    async def _stream(self, served: _Served, source: LogSource) -> None:
        request = served.request
        attempt = source.attempt if source.attempt > 0 else None
        if attempt is None and not request.follow:
            await self._reply(served, 0, "", eof=True)  # not started yet: nothing written
            return
        first, end = await self._read_off_loop(streams.span, source.run_dir, request.stream, attempt)
        reader = _Reader(max(first, end - request.tail_bytes))
        while reader.position < end:  # the tail: what is there now
            chunk = await self._chunk(served, reader, source.run_dir, attempt, until=end)
            if chunk is None:
                break
            await self._reply(served, *chunk, eof=False)
        if request.follow:
            await self._follow(served, reader, source.run_dir, attempt)
        else:
            await self._reply(served, reader.position, "", eof=True)

    async def _follow(self, served: _Served, reader: _Reader, run_dir: Path, attempt: int | None) -> None:
        request = served.request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.follow_s)
        while True:
            current = self._lookup(request.execution_id)
            if attempt is None and current is not None and current.attempt > 0:
                attempt = current.attempt  # the first attempt started while the follow waited
            # Ended: gone from the agent, a later attempt started, or its process is no more (the
            # supervisor exits only once its writers have reached the end, so the files are complete).
            ended = current is None or (
                attempt is not None and (current.attempt != attempt or not current.running)
            )
            sent = 0
            while sent < CHUNKS_PER_LOOK or ended:
                chunk = await self._chunk(served, reader, run_dir, attempt, final=ended)
                if chunk is None:
                    break
                await self._reply(served, *chunk, eof=False)
                sent += 1
            if sent == CHUNKS_PER_LOOK:  # more may be waiting: how far behind the log is this follow?
                _, end = await self._read_off_loop(streams.span, run_dir, request.stream, attempt)
                if end - reader.position > MAX_FOLLOW_LAG_BYTES:
                    raise SlowRequester(f"it fell {(end - reader.position) >> 20} MiB behind the log")
            if ended or served.cancelled.is_set() or loop.time() >= deadline:
                await self._reply(served, reader.position, "", eof=True)
                return
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL_S, max(0.0, deadline - loop.time()))):
                        await served.cancelled.wait()

    async def _chunk(
        self,
        served: _Served,
        reader: _Reader,
        run_dir: Path,
        attempt: int | None,
        *,
        final: bool = False,
        until: int | None = None,
    ) -> tuple[int, str] | None:
        """The next reply's (offset, data) from the files, or None if nothing whole is there yet. A
        character cut by the read's end is left for the next read, unless ``final`` (or the read reaches
        ``until``, the end of a one-shot tail): then it is sent, replaced."""
        offset, data = await self._read_off_loop(
            streams.read_range, run_dir, served.request.stream, reader.position, REPLY_DATA_BYTES, attempt
        )
        last = final or (until is not None and offset + len(data) >= until)
        return reader.take(offset, data, final=last)

    async def _read_off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn, *args)

    # --- replies --------------------------------------------------------------------------------------

    def _document(self, served: _Served, offset: int, data: str, eof: bool, error: str | None) -> Message:
        request = served.request
        document = {
            "request_id": request.request_id,
            "execution_id": request.execution_id,
            "node_id": self.topics.node_id,
            "stream": request.stream,
            "seq": served.seq,
            "offset": offset,
            "data": data,
            "eof": eof,
            "error": error,
        }
        return Message(self.topics.log_replies(request.request_id), dumps(document), retain=False)

    async def _reply(self, served: _Served, offset: int, data: str, *, eof: bool) -> None:
        """A reply waits for room in the queue; a follow's at most FOLLOW_ROOM_WAIT_S."""
        message = self._document(served, offset, data, eof, None)
        if served.request.follow:
            try:
                async with asyncio.timeout(FOLLOW_ROOM_WAIT_S):
                    await self.replies.put(message)
            except TimeoutError:
                raise SlowRequester(f"no room for its replies for {FOLLOW_ROOM_WAIT_S:g} s") from None
        else:
            await self.replies.put(message)
        served.seq += 1  # only once queued: a reply that found no room leaves no gap

    async def _error(self, served: _Served, reason: str) -> None:
        message = self._document(served, 0, "", True, reason)
        self._ending += 1
        try:
            async with asyncio.timeout(ERROR_PUT_TIMEOUT_S):
                await self.replies.put(message)
            served.seq += 1
        except TimeoutError:
            self.log.warning("log reply queue full; error reply dropped", request=served.request.request_id)
        finally:
            self._ending -= 1

    def _reject(
        self, request_id: str | None, execution_id: str | None, stream: str | None, reason: str
    ) -> None:
        document = {
            "request_id": request_id,
            "execution_id": execution_id,
            "node_id": self.topics.node_id,
            "stream": stream,
            "seq": 0,
            "offset": 0,
            "data": "",
            "eof": True,
            "error": reason,
        }
        message = Message(self.topics.log_replies(request_id), dumps(document), retain=False)
        try:
            self.replies.put_nowait(message)
        except asyncio.QueueFull:
            self.log.warning("log reply queue full; rejection dropped", request=request_id, reason=reason)
        self.log.info("log request rejected", request=request_id, reason=reason)


class _Reader:
    """Where a request is in its stream: the offset of the next byte to send."""

    def __init__(self, position: int) -> None:
        self.position = position

    def take(self, offset: int, data: bytes, *, final: bool) -> tuple[int, str] | None:
        """The reply for ``data`` read at ``offset`` (the offset, the text), and the position moves past
        what it holds; None if there is nothing whole to send (the bytes are read again next time)."""
        if not data:
            return None
        self.position = max(self.position, offset)  # later if rotation dropped what lay between
        whole = data if final else _whole_characters(data)
        if not whole:
            return None
        text, used = _text_within(whole)
        start = self.position
        self.position += len(used)
        return start, text


def _whole_characters(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut short at its end (the next read completes it)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead
        if 0xC2 <= byte <= 0xF4:  # the lead of a 2-, 3- or 4-byte sequence; other bytes are never valid
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data[:-back] if back < need else data
        return data
    return data


def _text_within(raw: bytes) -> tuple[str, bytes]:
    """The text of ``raw`` (bad bytes replaced) and the bytes it came from, cut so that its UTF-8 holds at
    most :data:`REPLY_DATA_BYTES` (a replacement character takes 3 bytes for the 1 it replaces)."""
    if len(raw) <= REPLY_DATA_BYTES and raw.isascii():
        return raw.decode("ascii"), raw  # most logs: one byte a character, nothing to measure again
    while True:
        text = raw.decode("utf-8", errors="replace")
        if len(text.encode()) <= REPLY_DATA_BYTES or len(raw) <= 1:
            return text, raw
        raw = _whole_characters(raw[: len(raw) // 2]) or raw[: len(raw) // 2]

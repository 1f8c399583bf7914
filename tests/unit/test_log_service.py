"""The log service on real segment files, without a broker: replies in order with their offsets, the
64 KiB cut on character boundaries, follows ended by the process's end, follow_s, a cancel or a full reply
queue, and at most eight at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.log_service import (
    MAX_FOLLOWS,
    REPLY_DATA_BYTES,
    REPLY_QUEUE,
    LogService,
    LogSource,
    _whole_characters,
)
from agent.protocol import Topics
from tests.support.wait import wait_until

TOPICS = Topics("reconcile/v1", "node-1")


class Executions:
    """What the runtime would say of each execution."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sources: dict[str, LogSource] = {}

    def add(self, execution_id: str, attempt: int = 1, running: bool = True) -> Path:
        directory = self.run_dir / execution_id
        directory.mkdir(exist_ok=True)
        self.sources[execution_id] = LogSource(directory, attempt, running)
        return directory

    def lookup(self, execution_id: str) -> LogSource | None:
        return self.sources.get(execution_id)


def segment(run_dir: Path, offset: int, data: bytes, attempt: int = 1, stream: str = "stdout") -> Path:
    path = run_dir / f"{stream}.{offset:020d}.{attempt}.log"
    path.write_bytes(data)
    return path


@contextlib.asynccontextmanager
async def serving(executions: Executions) -> AsyncIterator[LogService]:
    service = LogService(TOPICS, executions.lookup, 262_144)
    runner = asyncio.create_task(service.run())
    await asyncio.sleep(0)
    try:
        yield service
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def request(**fields: Any) -> bytes:
    return json.dumps({"request_id": "r1", "execution_id": "e1", **fields}).encode()


async def replies_until_eof(service: LogService, timeout: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not got or not got[-1]["eof"]:
            got.append(json.loads((await service.replies.get()).payload))
    return got


async def test_a_tail_comes_in_order_with_offsets_across_segments(tmp_path: Path) -> None:
    executions = Executions(tmp_path)
    run_dir = executions.add("e1", running=False)
    segment(run_dir, 1000, b"a" * 70_000)
    segment(run_dir, 71_000, b"b" * 10)
    async with serving(executions) as service:
        service.on_request(request(tail_bytes=1024 * 1024))
        got = await replies_until_eof(service)
    assert [r["seq"] for r in got] == list(range(len(got)))
    data = "".join(r["data"] for r in got)
    assert data == "a" * 70_000 + "b" * 10
    assert got[0]["offset"] == 1000  # the first retained byte: what rotation dropped is not there
    assert got[1]["offset"] == 1000 + REPLY_DATA_BYTES
    assert all(len(r["data"].encode()) <= REPLY_DATA_BYTES for r in got)
    assert got[-1]["error"] is None
    assert {r["request_id"] for r in got} == {"r1"}


async def test_only_the_current_attempt_and_only_the_tail_asked_for(tmp_path: Path) -> None:
    executions = Executions(tmp_path)
    run_dir = executions.add("e1", attempt=2, running=False)
    segment(run_dir, 0, b"first attempt\n", attempt=1)
    segment(run_dir, 14, b"second attempt\n", attempt=2)
    async with serving(executions) as service:
        service.on_request(request(tail_bytes=7))
        got = await replies_until_eof(service)
    assert "".join(r["data"] for r in got) == "ttempt\n"[-7:]
    assert got[0]["offset"] == 14 + 15 - 7


def test_a_character_cut_by_a_read_waits_for_its_other_bytes() -> None:
    euro = "€".encode()  # 3 bytes
    assert _whole_characters(b"ab" + euro[:2]) == b"ab"
    assert _whole_characters(b"ab" + euro) == b"ab" + euro
    assert _whole_characters(b"ab\xff") == b"ab\xff"  # not a lead byte: sent, replaced
    assert _whole_characters(euro[1:]) == euro[1:]


async def test_bad_bytes_are_replaced_and_data_stays_within_64_kib(tmp_path: Path) -> None:
    executions = Executions(tmp_path)
    run_dir = executions.add("e1", running=False)
    segment(run_dir, 0, b"\xff" * 70_000)
    async with serving(executions) as service:
        service.on_request(request(tail_bytes=70_000))
        got = await replies_until_eof(service)
    assert all(len(r["data"].encode()) <= REPLY_DATA_BYTES for r in got)
    assert "".join(r["data"] for r in got) == "\ufffd" * 70_000
    offsets = [r["offset"] for r in got if r["data"]]
    assert offsets == sorted(offsets)


def running_with(tmp_path: Path, written: bytes) -> tuple[Executions, Path]:
    """Execution e1, running, whose first segment holds ``written``; that segment."""
    executions = Executions(tmp_path)
    return executions, segment(executions.add("e1"), 0, written)


async def test_a_follow_sends_new_output_and_ends_with_the_process(tmp_path: Path) -> None:
    executions, live = running_with(tmp_path, b"old\n")
    async with serving(executions) as service:
        service.on_request(request(follow=True))
        first = json.loads((await service.replies.get()).payload)
        assert (first["data"], first["offset"], first["eof"]) == ("old\n", 0, False)
        with live.open("ab") as out:
            out.write(b"new\n")
        second = json.loads((await service.replies.get()).payload)
        assert (second["data"], second["offset"]) == ("new\n", 4)
        with live.open("ab") as out:
            out.write(b"last")
        executions.add("e1", running=False)  # the process ended (its writers were done before)
        rest = await replies_until_eof(service)
    assert "".join(r["data"] for r in rest) == "last"
    assert rest[-1]["eof"] is True
    assert rest[-1]["error"] is None
    assert service.follows == 0


async def test_a_follow_ends_at_follow_s_and_on_cancel(tmp_path: Path) -> None:
    executions = Executions(tmp_path)
    run_dir = executions.add("e1")
    segment(run_dir, 0, b"")
    async with serving(executions) as service:
        service.on_request(request(follow=True, follow_s=0.3))
        got = await replies_until_eof(service)
        assert got[-1]["eof"] is True
        assert got[-1]["error"] is None
        service.on_request(request(request_id="r2", follow=True))
        await wait_until(lambda: service.follows == 1, 5, what="the follow runs")
        service.on_request(json.dumps({"request_id": "r2", "cancel": True}).encode())
        got = await replies_until_eof(service)
        assert got[-1]["eof"] is True
        assert got[-1]["request_id"] == "r2"
        service.on_request(json.dumps({"request_id": "r2", "cancel": True}).encode())
        unknown = await replies_until_eof(service)
        assert unknown == [unknown[0]]
        assert "no follow" in unknown[0]["error"]


async def test_a_ninth_follow_gets_an_error_and_the_eight_go_on(tmp_path: Path) -> None:
    executions = Executions(tmp_path)
    run_dir = executions.add("e1")
    segment(run_dir, 0, b"")
    async with serving(executions) as service:
        for n in range(MAX_FOLLOWS):
            service.on_request(request(request_id=f"f{n}", follow=True))
        await wait_until(lambda: service.follows == MAX_FOLLOWS, 5, what="eight follows")
        service.on_request(request(request_id="f9", follow=True))
        reply = json.loads((await service.replies.get()).payload)
        assert reply["request_id"] == "f9"
        assert reply["eof"] is True
        assert "at most 8" in reply["error"]
        assert service.follows == MAX_FOLLOWS
        service.on_request(request(request_id="once"))  # a one-shot request is still served
        assert (await replies_until_eof(service))[-1]["request_id"] == "once"


async def test_a_follow_whose_replies_are_not_taken_ends_with_an_error(tmp_path: Path) -> None:
    executions, live = running_with(tmp_path, b"start\n")
    async with serving(executions) as service:
        service.on_request(request(follow=True))
        await wait_until(lambda: service.replies.qsize() == 1, 5, what="the tail sent: the follow runs")
        with live.open("ab") as out:  # far more than the queue holds; nobody takes the replies
            out.write(b"x" * REPLY_DATA_BYTES * (REPLY_QUEUE + 4))
        # No room for 2 s: the follow gives up, and its error reply waits for room.
        await wait_until(lambda: service.ending == 1, 20, what="the follow given up")
        queued = await replies_until_eof(service)
        await wait_until(lambda: service.follows == 0, 10, what="the follow ended")
    assert len(queued) <= REPLY_QUEUE + 1
    assert "too slow" in queued[-1]["error"]
    assert [r["seq"] for r in queued] == list(range(len(queued)))


@pytest.mark.parametrize("attempt", [0])
async def test_an_execution_not_started_yet_has_an_empty_log(tmp_path: Path, attempt: int) -> None:
    executions = Executions(tmp_path)
    executions.add("e1", attempt=attempt, running=False)
    async with serving(executions) as service:
        service.on_request(request())
        got = await replies_until_eof(service)
    assert got == [{**got[0], "data": "", "eof": True, "error": None}]

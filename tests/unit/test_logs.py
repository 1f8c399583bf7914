"""Workload log rotation (agent/executors/logs.py) on real files: sizes, keep, shifting, the live writer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path

import pytest
import structlog

from agent.executors.logs import prepare, rotate, rotate_all, rotate_forever, rotate_if_larger
from agent.streams import end_offset, latest_attempt, read_range, read_tail, rotated, segments
from tests.support.wait import wait_until


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_rotating_copies_then_truncates(tmp_path: Path) -> None:
    live = tmp_path / "stdout.log"
    live.write_bytes(b"first\n")
    assert rotate(live, keep=2)
    assert live.read_bytes() == b""
    assert rotated(live, 1).read_bytes() == b"first\n"
    assert names(tmp_path) == ["stdout.log", "stdout.log.1"]


def test_rotations_shift_up_and_the_oldest_falls_off(tmp_path: Path) -> None:
    live = tmp_path / "stdout.log"
    for generation in range(1, 6):
        live.write_bytes(f"generation {generation}\n".encode())
        assert rotate(live, keep=3)
    assert names(tmp_path) == ["stdout.log", "stdout.log.1", "stdout.log.2", "stdout.log.3"]
    assert [rotated(live, n).read_text() for n in (1, 2, 3)] == [
        "generation 5\n",
        "generation 4\n",
        "generation 3\n",
    ]


def test_keep_zero_truncates_without_a_copy(tmp_path: Path) -> None:
    live = tmp_path / "stderr.log"
    live.write_bytes(b"x" * 100)
    assert rotate(live, keep=0)
    assert names(tmp_path) == ["stderr.log"]
    assert live.stat().st_size == 0


def test_a_lower_keep_drops_the_older_files(tmp_path: Path) -> None:
    live = tmp_path / "stdout.log"
    for generation in range(4):
        live.write_text(f"{generation}\n")
        rotate(live, keep=4)
    assert len(list(tmp_path.glob("stdout.log.*"))) == 4
    live.write_text("new\n")
    rotate(live, keep=1)
    assert names(tmp_path) == ["stdout.log", "stdout.log.1"]
    assert rotated(live, 1).read_text() == "new\n"


def test_a_missing_stream_is_not_rotated(tmp_path: Path) -> None:
    assert not rotate(tmp_path / "stdout.log", keep=2)
    assert not rotate_if_larger(tmp_path / "stdout.log", 10, keep=2)
    assert names(tmp_path) == []


def test_only_a_stream_larger_than_max_bytes_is_rotated(tmp_path: Path) -> None:
    live = tmp_path / "stdout.log"
    live.write_bytes(b"x" * 4096)
    assert not rotate_if_larger(live, 4096, keep=2)
    live.write_bytes(b"x" * 4097)
    assert rotate_if_larger(live, 4096, keep=2)
    assert rotated(live, 1).stat().st_size == 4097


def test_an_append_writer_keeps_writing_from_zero(tmp_path: Path) -> None:
    """The supervisor's `>>`: O_APPEND, so after the truncation the next write lands at offset 0."""
    live = tmp_path / "stdout.log"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"a" * 5000)
        assert rotate(live, keep=1)
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert live.read_bytes() == b"after\n"  # no hole of 5000 zero bytes before it
    assert rotated(live, 1).read_bytes() == b"a" * 5000


def test_rotate_all_scans_both_streams_of_every_execution(tmp_path: Path) -> None:
    root = tmp_path / "executions"
    for execution in ("a", "b"):
        (root / execution).mkdir(parents=True)
        (root / execution / "stdout.log").write_bytes(b"o" * 5000)
        (root / execution / "stderr.log").write_bytes(b"e" * 10)
        (root / execution / "supervisor.log").write_bytes(b"s" * 5000)
    (root / ".removing-c-0000").mkdir()
    (root / ".removing-c-0000" / "stdout.log").write_bytes(b"o" * 5000)
    done, errors = rotate_all(root, 4096, keep=2)
    assert errors == {}
    assert sorted(done) == [root / "a" / "stdout.log", root / "b" / "stdout.log"]
    assert (root / "a" / "stderr.log").read_bytes() == b"e" * 10
    assert (root / "a" / "supervisor.log").stat().st_size == 5000  # not a workload stream
    assert names(root / ".removing-c-0000") == ["stdout.log"]  # being deleted: left alone


def test_rotate_all_without_any_execution_yet(tmp_path: Path) -> None:
    assert rotate_all(tmp_path / "executions", 4096, keep=2) == ([], {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_rotate_all_reports_an_unreadable_stream_and_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "executions"
    for execution in ("a", "b"):
        (root / execution).mkdir(parents=True)
        (root / execution / "stdout.log").write_bytes(b"o" * 5000)
    (root / "a" / "stdout.log").chmod(0o200)
    done, errors = rotate_all(root, 4096, keep=2)
    assert done == [root / "b" / "stdout.log"]
    assert list(errors) == [root / "a" / "stdout.log"]
    assert "permission denied" in errors[root / "a" / "stdout.log"]


def test_rotate_all_reports_a_failure_and_goes_on(tmp_path: Path) -> None:
    """Works as root too: a directory where the rotated copy should go makes the rename fail."""
    root = tmp_path / "executions"
    for execution in ("a", "b"):
        (root / execution).mkdir(parents=True)
        (root / execution / "stdout.log").write_bytes(b"o" * 5000)
    (root / "a" / "stdout.log.1").mkdir()
    (root / "a" / "stdout.log.1" / "occupied").touch()
    done, errors = rotate_all(root, 4096, keep=1)
    assert done == [root / "b" / "stdout.log"]
    assert list(errors) == [root / "a" / "stdout.log"]


async def test_rotate_forever_rotates_logs_a_failure_once_and_never_returns(tmp_path: Path) -> None:
    root = tmp_path / "executions"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    (root / "b" / "stdout.log.1").mkdir()  # makes every rotation of b fail the same way
    (root / "b" / "stdout.log.1" / "occupied").touch()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(rotate_forever(root, 4096, keep=1, interval_s=0.01))
        try:
            for round_ in range(3):
                (root / "a" / "stdout.log").write_bytes(bytes([65 + round_]) * 5000)
                (root / "b" / "stdout.log").write_bytes(b"b" * 5000)
                await wait_until(lambda: (root / "a" / "stdout.log").stat().st_size == 0, 5, what="a rotated")
                assert rotated(root / "a" / "stdout.log", 1).read_bytes()[:1] == bytes([65 + round_])
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["path"] == str(root / "b" / "stdout.log")


@pytest.mark.parametrize(
    ("older", "live", "tail", "more"),
    [
        (None, b"", b"", False),
        (None, b"abc", b"abc", False),
        (None, b"abcdefgh", b"defgh", True),
        (b"12345678", b"ab", b"678ab", True),
        (b"123", b"ab", b"123ab", False),
        (b"1234", b"ab", b"234ab", True),
        (b"123", b"abcde", b"abcde", True),
        (b"", b"abcde", b"abcde", False),
    ],
)
def test_read_tail_spans_format_1_rotation(
    tmp_path: Path, older: bytes | None, live: bytes, tail: bytes, more: bool
) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(live)
    if older is not None:
        rotated(path, 1).write_bytes(older)
    assert read_tail(tmp_path, "stdout", 5) == (tail, more)


def test_read_tail_of_nothing(tmp_path: Path) -> None:
    assert read_tail(tmp_path, "stdout", 5) == (b"", False)
    assert read_tail(tmp_path / "absent", "stdout", 5) == (b"", False)


def segment(run_dir: Path, stream: str, offset: int, attempt: int, data: bytes) -> Path:
    path = run_dir / f"{stream}.{offset:020d}.{attempt}.log"
    path.write_bytes(data)
    return path


def test_segments_are_listed_oldest_first_with_their_offsets(tmp_path: Path) -> None:
    segment(tmp_path, "stdout", 20, 2, b"uvw")
    segment(tmp_path, "stdout", 10, 1, b"0123456789")
    segment(tmp_path, "stderr", 0, 1, b"e")
    (tmp_path / "stdout.fifo").touch()
    found = segments(tmp_path, "stdout")
    assert [(s.offset, s.attempt) for s in found] == [(10, 1), (20, 2)]
    assert latest_attempt(found) == 2
    assert end_offset(tmp_path, "stdout") == 23
    assert end_offset(tmp_path, "stderr") == 1
    assert end_offset(tmp_path, "absent") == 0


def test_format_1_files_come_first_counted_from_zero(tmp_path: Path) -> None:
    (tmp_path / "stdout.log.1").write_bytes(b"old")
    (tmp_path / "stdout.log").write_bytes(b"er")
    segment(tmp_path, "stdout", 5, 3, b"new")
    found = segments(tmp_path, "stdout")
    assert [(s.path.name, s.offset, s.attempt) for s in found] == [
        ("stdout.log.1", 0, None),
        ("stdout.log", 3, None),
        (f"stdout.{5:020d}.3.log", 5, 3),
    ]
    assert read_range(tmp_path, "stdout", 0, 100) == (0, b"oldernew")


def test_read_range_starts_at_the_first_retained_byte_and_spans_segments(tmp_path: Path) -> None:
    segment(tmp_path, "stdout", 100, 1, b"abcd")
    segment(tmp_path, "stdout", 104, 1, b"efgh")
    segment(tmp_path, "stdout", 108, 2, b"ij")
    assert read_range(tmp_path, "stdout", 0, 5) == (100, b"abcde")  # 0..99 rotated away
    assert read_range(tmp_path, "stdout", 103, 100) == (103, b"defghij")
    assert read_range(tmp_path, "stdout", 110, 100) == (110, b"")
    assert read_range(tmp_path, "stdout", 0, 100, attempt=2) == (108, b"ij")
    assert read_range(tmp_path, "stdout", 0, 100, attempt=1) == (100, b"abcdefgh")
    assert read_tail(tmp_path, "stdout", 3) == (b"hij", True)


def test_prepare_makes_fresh_fifos_and_the_format_marker(tmp_path: Path) -> None:
    (tmp_path / "stdout.fifo").write_text("a stale regular file")
    prepare(tmp_path)
    assert all(stat.S_ISFIFO((tmp_path / f"{n}.fifo").stat().st_mode) for n in ("stdout", "stderr"))
    assert (tmp_path / "format").read_text() == "2\n"

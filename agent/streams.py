"""A workload's log streams on disk: their layout, and the one reader API of everyone who reads them.

The executor prepares and (format 1) rotates them (agent/executors/logs.py), run_output takes their tail,
the results archive reads them whole (agent/results/pack.py), logs on request reads ranges
(agent/log_service.py); all take the layout from here, so none imports another.

Format 2 (docs/upgrade.md, docs/design.md "Workload logs"): the workload writes into two pipes (the
native supervisor, agent/executors/supervisor.c) or FIFOs (``stdout.fifo``, ``stderr.fifo``: the shell
supervisor's); the supervisor (or its writers, supervisor.sh ``segments``) copies each into segments ``<stream>.<offset>.<attempt>.log`` of exactly ``max_bytes`` bytes, ``offset`` (20
digits) being where the segment's first byte sits in the stream's whole log, and removes the oldest
before it starts a new one, so that at most ``keep`` full segments and the one being written remain.
Attempts append to one stream: each starts a segment of its own at the end of the last one
(:func:`end_offset`).

Format 1, still read (its supervisors may outlive an upgrade): the workload appended to ``stdout.log``
directly, rotated by copy-then-truncate into ``stdout.log.1`` ... ``.<keep>``. Its files come before
the segments, their offsets counted from the first byte still on disk (what rotation dropped was never
counted).

Readers never lock against the writer: a segment's name says where its bytes sit, so data read from an
open segment is right whatever happens to the files meanwhile; a segment removed between the listing
and its opening makes the read list again. They block: run them in a worker thread.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STREAM_FILES = (("stdout", "stdout.log"), ("stderr", "stderr.log"))  # each stream and its live file
STREAMS = tuple(live for _, live in STREAM_FILES)  # format 1's live files
STREAM_NAMES = tuple(name for name, _ in STREAM_FILES)
_SEGMENT = re.compile(r"(stdout|stderr)\.([0-9]{20})\.([0-9]+)\.log")
_RETRIES = 5  # listings in a row that a concurrent removal may spoil before a read gives up


@dataclass(frozen=True)
class Segment:
    path: Path
    offset: int  # where its first byte sits in the stream's whole log
    attempt: int | None  # None for a format-1 file, which may hold several attempts


class LogGone(OSError):
    """The stream's files kept vanishing while they were read (the execution is being removed)."""


# One rotation at a time in a process; reading a stream whole holds it too (rotation_paused).
lock = threading.Lock()


def rotated(live: Path, n: int) -> Path:
    """The n-th rotated file of ``live`` (1 is the newest)."""
    return live.with_name(f"{live.name}.{n}")


@contextmanager
def rotation_paused() -> Iterator[None]:
    """No rotation starts (in this process) until the block ends: a stream's files hold still."""
    with lock:
        yield


def stream_files(live: Path) -> list[Path]:
    """Every file that holds part of a stream, oldest first: ``live.N`` ... ``live.1``, then ``live``.

    Only files that exist; call it under :func:`rotation_paused` so the list stays true while read.
    """
    pattern = re.compile(re.escape(live.name) + r"\.([0-9]+)")
    numbered = []
    for path in live.parent.glob(f"{live.name}.*"):
        match = pattern.fullmatch(path.name)
        if match is not None:
            numbered.append((int(match.group(1)), path))
    files = [path for _, path in sorted(numbered, reverse=True)]
    return [*files, live] if live.exists() else files


def segments(run_dir: Path, stream: str) -> list[Segment]:
    """The files of ``stream`` (``stdout`` or ``stderr``) on disk now, oldest first, each with the offset
    of its first byte in the whole log: format-1 files first (older), then format-2 segments."""
    legacy: list[Segment] = []
    offset = 0
    for path in stream_files(run_dir / f"{stream}.log"):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        legacy.append(Segment(path, offset, None))
        offset += size
    found = []
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return legacy
    for name in names:
        match = _SEGMENT.fullmatch(name)
        if match is not None and match.group(1) == stream:
            found.append(Segment(run_dir / name, int(match.group(2)), int(match.group(3))))
    return legacy + sorted(found, key=lambda segment: segment.offset)


def latest_attempt(found: list[Segment]) -> int | None:
    """The attempt that wrote last (the current or last one), or None if only format 1 is on disk."""
    attempts = [s.attempt for s in found if s.attempt is not None]
    return max(attempts) if attempts else None


def of_attempt(found: list[Segment], attempt: int | None) -> list[Segment]:
    """The segments written by ``attempt`` (all of them for None). Where it has none but format-1 files
    exist (its supervisor predates format 2), those: they hold its output, among earlier attempts'."""
    if attempt is None:
        return found
    own = [s for s in found if s.attempt == attempt]
    return own or [s for s in found if s.attempt is None]


def span(run_dir: Path, stream: str, attempt: int | None = None) -> tuple[int, int]:
    """Where the retained log of ``stream`` (only ``attempt``'s, if given) starts and ends in the whole log.
    Blocking: run it in a worker thread."""
    for _ in range(_RETRIES):
        found = of_attempt(segments(run_dir, stream), attempt)
        if not found:
            return 0, 0
        try:
            return found[0].offset, found[-1].offset + found[-1].path.stat().st_size
        except FileNotFoundError:
            continue
    raise LogGone(f"the logs in {run_dir} vanished while they were read")


def end_offset(run_dir: Path, stream: str) -> int:
    """Where the next byte of ``stream`` goes in its whole log: the start of a new attempt's segment."""
    return span(run_dir, stream)[1]


def read_range(
    run_dir: Path, stream: str, start: int, limit: int, attempt: int | None = None
) -> tuple[int, bytes]:
    """Up to ``limit`` bytes of ``stream`` from offset ``start`` on (only ``attempt``'s, if given): the
    offset where the bytes returned start (later than ``start`` if rotation dropped what was asked for)
    and the bytes. Blocking: run it in a worker thread."""
    for _ in range(_RETRIES):
        found = of_attempt(segments(run_dir, stream), attempt)
        try:
            return _read(found, start, limit)
        except FileNotFoundError:
            continue  # removed by the writer between the listing and the opening: list again
    raise LogGone(f"the logs in {run_dir} vanished while they were read")


def _read(found: list[Segment], start: int, limit: int) -> tuple[int, bytes]:
    if not found:
        return start, b""
    start = max(start, found[0].offset)
    chunks: list[bytes] = []
    at = start
    for segment in found:
        if limit <= 0:
            break
        with segment.path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if segment.offset + size <= at:
                continue
            if segment.offset > at:  # a hole between attempts' segments cannot be: the next starts here
                at = segment.offset
                if not chunks:
                    start = at
            file.seek(at - segment.offset)
            data = file.read(min(limit, segment.offset + size - at))
        chunks.append(data)
        at += len(data)
        limit -= len(data)
    return start, b"".join(chunks)


def read_tail(run_dir: Path, stream: str, limit: int) -> tuple[bytes, bool]:
    """The last ``limit`` bytes of ``stream`` across its segments, and whether the stream held anything
    before them (dropped by rotation or not). Missing files count as empty."""
    for _ in range(_RETRIES):
        found = segments(run_dir, stream)
        if not found:
            return b"", False
        try:
            end = found[-1].offset + found[-1].path.stat().st_size
            offset, data = _read(found, max(0, end - limit), limit)
        except FileNotFoundError:
            continue
        return data, offset > 0
    raise LogGone(f"the logs in {run_dir} vanished while they were read")

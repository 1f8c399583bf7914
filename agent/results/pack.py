"""Packing an attempt's results into one deterministic gzip'd tar archive.

The archive holds ``exit_code``, ``stdout``, ``stderr`` (the execution's whole logs, across rotation) and
``output/`` (the attempt's output directory). Packing the same execution again gives the same bytes, so
a publish repeated after a crash uploads the same archive under the same name with the same sha256:

- entries in a fixed order (the three files, then the output tree depth first, names sorted);
- every mtime 0, uid and gid 0 with no owner names, modes normalised (0755 for directories and for
  files with any execute bit, 0644 for other files, 0777 for symlinks);
- gzip with mtime 0 and no file name in its header, at a fixed compression level.

A symlink is archived as a link (its target as written) and never followed, so a workload cannot pull
files from outside its output directory into the archive; a file is opened with O_NOFOLLOW for the same
reason, should it be swapped for a link after the walk. FIFOs, sockets and devices are left out (reading
a FIFO would block the packer forever). Each file contributes the size it had when its entry was
written: bytes appended later by a process the workload left behind are not read, and a file that
shrinks meanwhile fails the try, which is then retried.

The size cap counts the bytes of every file in the archive before compression; a workload over it
fails the publish at once (retrying cannot shrink it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from agent.reasons import os_reason_at
from agent.results.errors import PublishError
from agent.streams import STREAM_NAMES, rotation_paused, segments

COMPRESS_LEVEL = 6  # gzip's and tar czf's default: level 9 costs twice the time for a few per cent
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Packed:
    path: Path
    sha256: str
    size_bytes: int
    files: int  # entries that are not directories: regular files and symlinks


@dataclass(frozen=True)
class _Entry:
    name: str  # in the archive
    path: Path
    kind: Literal["dir", "link", "file"]
    size: int = 0  # of a file, as the walk saw it


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class _Concat(io.RawIOBase):
    """The first ``size`` bytes of several open files in turn, as one stream (a rotated log)."""

    def __init__(self, parts: list[tuple[BinaryIO, int]], stop: threading.Event) -> None:
        super().__init__()
        self._parts = parts
        self._stop = stop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._stop.is_set():  # the agent is stopping: the try is repeated after its restart
            raise PublishError("the agent stopped while packing", retryable=True)
        while self._parts:
            stream, left = self._parts[0]
            if left == 0:
                self._parts.pop(0)
                continue
            data = stream.read(min(len(buffer), left))
            if not data:
                raise PublishError(f"{stream.name} shrank while it was packed", retryable=True)
            buffer[: len(data)] = data
            self._parts[0] = (stream, left - len(data))
            return len(data)
        return 0


def _reader(parts: list[tuple[BinaryIO, int]], stop: threading.Event) -> BinaryIO:
    return io.BufferedReader(_Concat(parts, stop), CHUNK)


def pack(
    destination: Path,
    output_dir: Path,
    run_dir: Path,
    exit_code: int | None,
    max_bytes: int,
    *,
    stop: threading.Event | None = None,
) -> Packed:
    """Write the archive to ``destination`` (atomically, through a ``.partial`` file) and describe it.

    ``destination``'s parent is created if its own parent exists. Setting ``stop`` ends a pack under way
    (an agent that stops must not wait for a gigabyte to be compressed). Raises :class:`PublishError`.
    Blocking: run it in a worker thread.
    """
    entries = list(_walk(output_dir, "output"))
    exit_text = b"" if exit_code is None else f"{exit_code}\n".encode()
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        # Not parents=True: a run directory removed with its execution meanwhile must not come back.
        destination.parent.mkdir(exist_ok=True)
        with rotation_paused(), ExitStack() as stack:
            logs = [(name, _open_stream(stack, run_dir, name)) for name in STREAM_NAMES]
            content = len(exit_text) + sum(size for _, parts in logs for _, size in parts)
            content += sum(e.size for e in entries)
            _check_size(content, max_bytes)
            with partial.open("wb") as raw:
                hashing = _Hashing(raw)
                files = _write(hashing, entries, exit_text, logs, stop or threading.Event())
                raw.flush()
                os.fsync(raw.fileno())
        os.replace(partial, destination)
        _fsync_dir(destination.parent)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise PublishError(f"cannot pack the results: {os_reason_at(exc)}", retryable=True) from exc
    except PublishError:
        partial.unlink(missing_ok=True)
        raise
    return Packed(destination, hashing.sha256.hexdigest(), hashing.size, files)


def _check_size(content: int, max_bytes: int) -> None:
    if content > max_bytes:
        raise PublishError(
            f"the results are {content} bytes (output directory and logs), over the limit of "
            f"{max_bytes} (limits.max_results_bytes)",
            retryable=False,
        )


def _write(
    sink: _Hashing,
    entries: list[_Entry],
    exit_text: bytes,
    logs: list[tuple[str, list[tuple[BinaryIO, int]]]],
    stop: threading.Event,
) -> int:
    files = 0
    # filename="" and mtime=0: nothing about this moment or this path ends up in the gzip header.
    with (
        gzip.GzipFile(filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=sink, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_info("exit_code", tarfile.REGTYPE, 0o644, len(exit_text)), io.BytesIO(exit_text))
        files += 1
        for name, parts in logs:
            tar.addfile(
                _info(name, tarfile.REGTYPE, 0o644, sum(size for _, size in parts)), _reader(parts, stop)
            )
            files += 1
        for entry in entries:
            files += _add(tar, entry, stop)
    return files


def _add(tar: tarfile.TarFile, entry: _Entry, stop: threading.Event) -> int:
    if entry.kind == "dir":
        tar.addfile(_info(entry.name, tarfile.DIRTYPE, 0o755))
        return 0
    if entry.kind == "link":
        info = _info(entry.name, tarfile.SYMTYPE, 0o777)
        info.linkname = os.readlink(entry.path)
        tar.addfile(info)
        return 1
    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as stream:
        now = os.fstat(stream.fileno())
        if not stat.S_ISREG(now.st_mode):
            raise PublishError(f"{entry.path} changed while it was packed", retryable=True)
        executable = bool(now.st_mode & 0o111)
        info = _info(entry.name, tarfile.REGTYPE, 0o755 if executable else 0o644, now.st_size)
        tar.addfile(info, _reader([(stream, now.st_size)], stop))
    return 1


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _walk(root: Path, name: str) -> Iterator[_Entry]:
    """``root`` and everything under it, depth first with names sorted; links are not followed."""
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        if name == "output":
            yield _Entry(name, root, "dir")  # no output directory (the spawn failed): an empty one
        return  # else: removed since the listing
    if stat.S_ISLNK(mode):
        yield _Entry(name, root, "link")
    elif stat.S_ISREG(mode):
        yield _Entry(name, root, "file", os.lstat(root).st_size)
    elif stat.S_ISDIR(mode):
        yield _Entry(name, root, "dir")
        for child in sorted(os.listdir(root)):
            yield from _walk(root / child, f"{name}/{child}")
    # else a FIFO, socket or device: never read


def _open_stream(stack: ExitStack, run_dir: Path, name: str) -> list[tuple[BinaryIO, int]]:
    """The files of a log stream (agent/streams.py), oldest first, open, each with the size it has now."""
    parts: list[tuple[BinaryIO, int]] = []
    for segment in segments(run_dir, name):
        try:
            stream: BinaryIO = stack.enter_context(segment.path.open("rb"))
        except FileNotFoundError:
            continue
        parts.append((stream, os.fstat(stream.fileno()).st_size))
    return parts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

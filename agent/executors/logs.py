"""Workload logs on the executor's side: the marker of format 2 (and the shell supervisor's FIFOs) made
before each spawn (:func:`prepare`; the layout and the readers are agent/streams.py), and the rotation
of format-1 logs.

Format 2's writers (supervisor.c, or supervisor.sh's) keep each stream within ``max_bytes x (1 + keep)``
themselves. What follows is format 1, for supervisors of older agents that outlive an upgrade:
``stdout.log`` and ``stderr.log`` written directly by the workload.

The supervisor (supervisor.sh) holds each stream open with O_APPEND for as long as the workload runs, and
may outlive the agent, so a log cannot be renamed away: the workload would keep writing to the renamed
file. Rotation is therefore logrotate's *copytruncate*: ``stdout.log.1`` ... ``stdout.log.<keep>`` are
shifted up by one (the oldest falls off), the live file is copied to a new ``stdout.log.1`` (written as a
temporary file and renamed into place first, so a failure leaves the live file whole), and the live file
is truncated to 0 bytes; being O_APPEND, the workload's next write lands at the new end, 0.

- A stream is rotated when a scan finds it larger than ``max_bytes``; scans run every ``interval_s``, so
  a file can overshoot by what the workload writes in between, and a rotated file holds everything the
  live file had (at least ``max_bytes``).
- What the workload writes between the end of the copy and the truncation (microseconds) is lost: the
  price of copytruncate, the only rotation possible under a writer that cannot be told to reopen.
- ``keep`` 0 means truncate without a copy. Rotated files beyond ``keep`` (left by a larger ``keep``
  before) are removed at the next rotation of that stream.
- The files live in the execution's directory, so they go with it when the execution is deleted
  (ProcessExecutor.remove). Rotation only ever names files through that directory's path, so once
  ``remove`` has renamed the directory away a rotation in progress can no longer create anything in it.
- The file work runs in a worker thread; one rotation at a time in a process (a lock), so a second
  rotator on the same directory (a test, say) cannot interleave with the agent's. Reading a stream whole
  (the results archive, agent/results/pack.py) holds the same lock, so it sees the files as they are
  between two rotations, never halfway through one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
from pathlib import Path

import structlog

from agent.reasons import os_reason_at
from agent.streams import STREAM_NAMES, STREAMS, lock, rotated

log = structlog.get_logger("agent.executors.logs")

COPY_CHUNK = 1024 * 1024
FORMAT_FILE = "format"  # in the run directory: the supervisor files' format (docs/upgrade.md)


def rotate(live: Path, keep: int) -> bool:
    """Rotate ``live`` now (copy, then truncate); False if it does not exist. Raises OSError."""
    with lock:
        try:
            source = live.open("r+b")  # not O_APPEND: ftruncate needs write access, the writer is unaffected
        except FileNotFoundError:
            return False
        with source:
            _drop_beyond(live, keep)
            if keep == 0:
                os.ftruncate(source.fileno(), 0)
                return True
            for n in range(keep - 1, 0, -1):
                try:
                    os.replace(rotated(live, n), rotated(live, n + 1))
                except FileNotFoundError:
                    continue
            temporary = live.with_name(f"{live.name}.1.tmp")
            with temporary.open("wb") as copy:
                try:
                    shutil.copyfileobj(source, copy, COPY_CHUNK)
                    os.replace(temporary, rotated(live, 1))
                except BaseException:
                    temporary.unlink(missing_ok=True)
                    raise  # the live file is untouched: nothing is lost
                # What the writer added meanwhile, up to EOF, then the truncation straight away.
                shutil.copyfileobj(source, copy, COPY_CHUNK)
                os.ftruncate(source.fileno(), 0)
        return True


def _drop_beyond(live: Path, keep: int) -> None:
    pattern = re.compile(re.escape(live.name) + r"\.([0-9]+)")
    for path in live.parent.glob(f"{live.name}.*"):
        match = pattern.fullmatch(path.name)
        if match is not None and int(match.group(1)) > keep:
            path.unlink(missing_ok=True)


def rotate_if_larger(live: Path, max_bytes: int, keep: int) -> bool:
    """Rotate ``live`` if it is larger than ``max_bytes``; whether it was rotated. Raises OSError."""
    try:
        size = live.stat().st_size
    except FileNotFoundError:
        return False
    return size > max_bytes and rotate(live, keep)


def rotate_all(root: Path, max_bytes: int, keep: int) -> tuple[list[Path], dict[Path, str]]:
    """One scan of every execution under ``root``: the streams rotated, and the errors by stream."""
    done: list[Path] = []
    errors: dict[Path, str] = {}
    try:
        run_dirs = [d for d in root.iterdir() if not d.name.startswith(".")]
    except FileNotFoundError:
        return done, errors  # no execution has run yet
    except OSError as exc:
        return done, {root: os_reason_at(exc)}
    for run_dir in run_dirs:
        for name in STREAMS:
            live = run_dir / name
            try:
                if rotate_if_larger(live, max_bytes, keep):
                    done.append(live)
            except OSError as exc:
                if run_dir.exists():  # else: removed with its execution meanwhile, not a problem
                    errors[live] = os_reason_at(exc)
    return done, errors


async def rotate_forever(root: Path, max_bytes: int, keep: int, interval_s: float = 5.0) -> None:
    """Every ``interval_s``, rotate each workload stream under ``root`` that is larger than ``max_bytes``.

    Never returns and never raises (except when cancelled): a failure is logged once, when it first
    appears, and the scans go on.
    """
    reported: dict[Path, str] = {}
    while True:
        try:
            done, errors = await asyncio.to_thread(rotate_all, root, max_bytes, keep)
        except Exception as exc:  # a bug, not an I/O error: keep rotating what can be rotated
            done, errors = [], {root: repr(exc)}
        for live in done:
            log.debug("workload log rotated", path=str(live), keep=keep)
        for path, error in errors.items():
            if reported.get(path) != error:
                log.warning("cannot rotate a workload log", path=str(path), error=error)
        reported = errors
        await asyncio.sleep(interval_s)


# What supervisor.sh's shell log writers run besides sh's builtins (all coreutils); the native supervisor
# (agent/executors/native.py) needs none of them.
WRITER_PROGRAMS = ("stdbuf", "head", "wc", "sleep", "rm")


@functools.cache
def writer_problem() -> str | None:
    """Why this node cannot run the shell log writers (a program missing from PATH), or None. Looked up once."""
    absent = [name for name in WRITER_PROGRAMS if shutil.which(name) is None]
    if not absent:
        return None
    return f"the workload log writer needs {', '.join(absent)} (Debian package coreutils) on PATH"


def prepare(run_dir: Path) -> None:
    """Before a spawn of the shell supervisor: the format marker and fresh FIFOs for its writers
    (supervisor.sh). The native supervisor gives its workload pipes and writes the marker itself, with
    its first segment."""
    for name in STREAM_NAMES:
        fifo = run_dir / f"{name}.fifo"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
    marker = run_dir / FORMAT_FILE
    if not marker.exists():
        marker.write_text("2\n")

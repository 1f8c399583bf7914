"""A workload's log streams on disk: their files, their rotated files, and the lock that holds them still.

The executor writes and rotates them (agent/executors/logs.py), the results archive reads them whole
(agent/results/pack.py); both take the layout from here, so neither imports the other. No I/O beyond
listing a stream's files.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STREAM_FILES = (("stdout", "stdout.log"), ("stderr", "stderr.log"))  # each stream and its live file
STREAMS = tuple(live for _, live in STREAM_FILES)

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

"""The log writing of the two supervisors, each against real workloads: the native supervisor, which copies
its workload's output itself (agent/executors/supervisor.c, built by agent/executors/native.py), and the
shell's writers, its fallback (supervisor.sh). Both must make the same files:
segments of exactly max_bytes named by their offset, at most keep full ones and the one being written per
stream across attempts, every byte as written; neither may leave a process behind, and the exit is
recorded even while a process the workload left behind holds its output open.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent.config import WorkloadLogsConfig
from agent.core.model import ProcessRef
from agent.executors import native
from agent.executors.cgroups import Containment
from agent.executors.process import ProcessExecutor
from agent.protocol import Spec
from agent.streams import read_range, segments, span
from tests.support.programs import require
from tests.support.wait import wait_until

EID = "logs"
MAX_BYTES = 4096
KEEP = 2
PATTERN = bytes(range(256))  # every byte value, NUL first

# Writes argv[1] bytes of PATTERN (from offset argv[2] in it) to stdout in chunks of 1000, then b"err\0"
# with no newline to stderr.
WRITE = """
import os, sys
size, start = int(sys.argv[1]), int(sys.argv[2])
data = (bytes(range(256)) * (size // 256 + 2))[start % 256 :][:size]
for i in range(0, size, 1000):
    os.write(1, data[i : i + 1000])
os.write(2, b"err\\0")
"""
# 64 KiB blocks as fast as it can, 24 MiB in all, on stdout; then b"end", no newline.
FLOOD = """
import os
block = bytes(range(256)) * 256
for _ in range(384):
    os.write(1, block)
os.write(1, b"end")
"""
FLOOD_BYTES = 384 * 65536 + 3


@pytest.fixture(params=["native", "shell"])
def executor(state_dir: Path, request: pytest.FixtureRequest) -> ProcessExecutor:
    supervisor = request.getfixturevalue("native_supervisor") if request.param == "native" else None
    return ProcessExecutor(
        state_dir,
        Containment(kind="process-group", reason="the writers are outside any cgroup anyway"),
        workload_logs=WorkloadLogsConfig(max_bytes=MAX_BYTES, keep=KEEP),
        native_supervisor=supervisor,
    )


def spec(*command: str) -> Spec:
    return Spec.model_validate({"command": list(command)})


async def run(executor: ProcessExecutor, attempt: int, *command: str) -> ProcessRef:
    """Spawn ``command`` as ``attempt`` and wait for its supervisor to have recorded the exit."""
    ref = await executor.spawn(EID, attempt, spec(*command))
    await asyncio.wait_for(executor.wait(ref), 30)
    return ref


def layout(run_dir: Path, stream: str) -> list[tuple[int, int | None, int]]:
    return [(s.offset, s.attempt, s.path.stat().st_size) for s in segments(run_dir, stream)]


def of_pattern(start: int, size: int) -> bytes:
    return (PATTERN * ((start + size) // 256 + 2))[start : start + size]


def session_of(supervisor: int) -> list[str]:
    """What still runs in the supervisor's session (its writers and timers, or the native one's copier
    left for a process the workload left behind; the workload has its own session)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getsid(process.pid) == supervisor and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.info["cmdline"] or []))
        except (ProcessLookupError, PermissionError):
            continue
    return found


async def test_bytes_as_written_in_segments_of_exactly_max_bytes_named_by_offset_across_attempts(
    executor: ProcessExecutor,
) -> None:
    run_dir = executor.run_dir(EID)
    await run(executor, 1, sys.executable, "-c", WRITE, "10000", "0")
    # Three segments, the first two exactly full; NUL bytes and the unfinished last chunk as written.
    assert layout(run_dir, "stdout") == [(0, 1, 4096), (4096, 1, 4096), (8192, 1, 1808)]
    assert read_range(run_dir, "stdout", 0, 1 << 20) == (0, of_pattern(0, 10000))
    assert read_range(run_dir, "stderr", 0, 100) == (0, b"err\0")

    # The next attempt goes on where the stream ended; before each new segment the oldest are removed,
    # whichever attempt wrote them, until at most KEEP remain.
    await run(executor, 2, sys.executable, "-c", WRITE, "5000", "10000")
    assert layout(run_dir, "stdout") == [(8192, 1, 1808), (10000, 2, 4096), (14096, 2, 904)]
    assert read_range(run_dir, "stdout", 0, 1 << 20) == (8192, of_pattern(8192, 6808))
    assert read_range(run_dir, "stdout", 10000, 1 << 20, attempt=2) == (10000, of_pattern(10000, 5000))
    assert layout(run_dir, "stderr") == [(0, 1, 4), (4, 2, 4)]
    assert executor.outcome(EID, 2).exit_code == 0


async def test_the_bound_holds_at_the_highest_write_rate_and_every_offset_adds_up(
    executor: ProcessExecutor,
) -> None:
    executor.log_limits = WorkloadLogsConfig(max_bytes=256 * 1024, keep=KEEP)
    bound = executor.log_limits.bound
    run_dir = executor.run_dir(EID)
    ref = await executor.spawn(EID, 1, spec(sys.executable, "-c", FLOOD))
    peak = 0
    waiting = asyncio.ensure_future(executor.wait(ref))
    async with asyncio.timeout(60):
        while not waiting.done():
            peak = max(peak, sum(size for _, _, size in _sizes(run_dir, "stdout")))
            await asyncio.sleep(0.001)
    assert peak <= bound
    first, data = read_range(run_dir, "stdout", 0, 1 << 26)
    assert first + len(data) == FLOOD_BYTES
    assert first == (FLOOD_BYTES // (256 * 1024) - KEEP) * 256 * 1024
    assert data == of_pattern(first, len(data) - 3) + b"end"
    assert executor.outcome(EID, 1).exit_code == 0


def _sizes(run_dir: Path, stream: str) -> list[tuple[int, int | None, int]]:
    """The layout, skipping a segment removed between the listing and its stat."""
    found = []
    for s in segments(run_dir, stream):
        try:
            found.append((s.offset, s.attempt, s.path.stat().st_size))
        except FileNotFoundError:
            continue
    return found


async def test_the_exit_is_recorded_while_a_process_the_workload_left_holds_its_output(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """The writer goes on for what the workload left behind; the exit file does not wait for it."""
    go = tmp_path / "go"
    script = f"{{ while [ ! -e {go} ]; do sleep 0.02; done; printf late; }} & printf early; exit 3"
    ref = await run(executor, 1, "sh", "-c", script)
    run_dir = executor.run_dir(EID)
    assert executor.outcome(EID, 1).exit_code == 3
    assert read_range(run_dir, "stdout", 0, 100) == (0, b"early")
    assert session_of(ref.supervisor_pid), "no writer goes on for the process left behind"
    go.touch()
    await wait_until(lambda: read_range(run_dir, "stdout", 0, 100) == (0, b"earlylate"), 10, what="late")
    await wait_until(lambda: not session_of(ref.supervisor_pid), 10, what="the writer gone at the end")


async def test_nothing_of_the_supervisor_outlives_it(executor: ProcessExecutor) -> None:
    """Its writers have ended and its timer is gone (the shell's sleep 2 was left behind for 2 s)."""
    for attempt in (1, 2, 3):
        ref = await run(executor, attempt, "sh", "-c", "echo done")
        assert session_of(ref.supervisor_pid) == []
        assert read_range(executor.run_dir(EID), "stdout", 0, 100, attempt=attempt)[1] == b"done\n"


def test_the_native_supervisor_is_built_once_into_its_cache_and_older_builds_are_removed(
    tmp_path: Path,
) -> None:
    require("cc")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "supervisor-0123456789abcdef").write_bytes(b"an older version's")
    (cache / "logwriter-0123456789abcdef").write_bytes(b"the native log writer of the agents before")
    built = native.build(cache)
    assert built is not None
    assert built.name == native.cached_name()
    assert sorted(p.name for p in cache.iterdir()) == [built.name]  # no temporary file either
    made = built.stat().st_mtime_ns
    assert native.build(cache) == built
    assert built.stat().st_mtime_ns == made  # not built again


def test_without_a_compiler_or_a_binary_that_runs_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor then runs the shell supervisor and its writers (tests/integration/test_workload_logs.py runs an agent
    so)."""
    monkeypatch.setenv("CC", "no-such-compiler")
    assert native.build(tmp_path / "empty") is None
    # A cached file that does not run (a noexec mount, a damaged copy) is not used either.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / native.cached_name()).write_bytes(b"#!/bin/sh\nexit 0\n")
    assert native.build(cache) is None


def test_the_source_compiles_without_a_warning(tmp_path: Path) -> None:
    cc = require("cc")
    source = Path(native.__file__).with_name(native.SOURCE)
    done = subprocess.run(
        [
            cc,
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wshadow",
            "-Wconversion",
            "-Werror",
            "-o",
            str(tmp_path / "w"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_a_quiet_attempt_has_no_log_of_its_own_even_beside_a_format_1_log(
    executor: ProcessExecutor,
) -> None:
    """The native supervisor makes a segment with the stream's first byte (and supervisor.log with its first
    message), so a quiet attempt costs no file; beside a format-1 log it makes an empty one at once, or the
    readers of an attempt's log (logs on request) would take the older agent's log for the attempt's
    (agent/streams.py, of_attempt)."""
    run_dir = executor.run_dir(EID)
    await run(executor, 1, "true")
    quiet = [] if executor.native_supervisor is not None else [(0, 1, 0)]
    assert (layout(run_dir, "stdout"), layout(run_dir, "stderr")) == (quiet, quiet)
    assert (run_dir / "supervisor.log").exists() == (executor.native_supervisor is None)
    # Nor the format marker: the native supervisor writes it with its first segment (no log, no format).
    assert (run_dir / "format").exists() == (executor.native_supervisor is None)
    assert executor.outcome(EID, 1).exit_code == 0

    (run_dir / "stdout.log").write_bytes(b"an attempt under an agent before format 2\n")
    await run(executor, 2, "true")
    start, end = span(run_dir, "stdout", attempt=2)
    assert start == end
    assert read_range(run_dir, "stdout", 0, 100, attempt=2)[1] == b""
    assert (run_dir / "format").read_text() == "2\n"  # a segment, and so the marker
    assert executor.outcome(EID, 2).exit_code == 0

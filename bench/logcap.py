"""The log cap at a high write rate: bytes on disk against ``max_bytes x (1 + keep)``, per log writer.

    .venv/bin/python -m bench.logcap [--rate-mb 45] [--seconds 4] [--max-bytes 10485760] [--keep 3]

A workload writes ``--rate-mb`` MB/s (and then as fast as it can) of 64 KiB blocks, then ``end`` with no
newline, and exits. Each writer is measured on the same workload in the same run:

- ``native``: the agent's own (agent/executors/supervisor.c: the supervisor copies both pipes into
  segments itself, the oldest removed before each new one), built here as the agent builds it (skipped
  without a C compiler);
- ``segments``: the shell supervisor's writers, its fallback without a compiler (each FIFO copied by
  ``stdbuf -o0 head -c`` per segment, in a dash loop);
- ``copytruncate``: the workload appends to a file that ``rotate_forever`` rotates every 5 s (the agent
  before format 2: the baseline);
- ``s6-log`` and ``svlogd`` (Debian ``s6``, ``runit``), where installed, set to the same bound.

Printed per writer: the peak of the bytes on disk (sampled every 5 ms) against the bound, the rate the
workload reached, the proportional memory (PSS) of the writer's processes, and whether the log ends with
the workload's last bytes (``end``) and, for ``native`` and ``segments``, whether the offsets add up to every
byte written. bench/logs.py prints those lines with its follow figures.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent import streams  # noqa: E402
from agent.config import WorkloadLogsConfig  # noqa: E402
from agent.executors import logs, native  # noqa: E402
from agent.executors.process import _supervisor_script  # noqa: E402

# Writes RATE bytes/s (0: as fast as it can) for SECONDS, in 64 KiB blocks, then "end" and exits.
WRITER = """
import os, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
block = bytes(range(256)) * 256
start = time.monotonic()
sent = 0
while (now := time.monotonic() - start) < seconds:
    if rate and sent > rate * now:
        time.sleep(0.001)
        continue
    os.write(1, block)
    sent += len(block)
os.write(1, b"end")
print(sent + 3, time.monotonic() - start, file=sys.stderr)
"""


SUPERVISED = ("native", "segments")  # the agent's: the native supervisor, or supervisor.sh


@dataclass(frozen=True)
class Figure:
    writer: str
    peak_bytes: int
    bound: int
    achieved_mb_s: float
    writer_pss_kib: int
    ends_whole: bool


def on_disk(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sample(directory: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], on_disk(directory))
        time.sleep(0.005)


def measure(
    kind: str, rate: float, seconds: float, limits: WorkloadLogsConfig, scratch: Path
) -> Figure | None:
    max_bytes, keep = limits.max_bytes, limits.keep
    directory = scratch / kind
    directory.mkdir()
    writer = [sys.executable, "-c", WRITER, str(rate), str(seconds)]
    rotator: threading.Thread | None = None
    rotation_done = threading.Event()
    if kind in SUPERVISED:
        launcher = ["/bin/sh", _supervisor_script()]
        if kind == "native":
            built = native.build(scratch / "cache")
            if built is None:
                return None
            launcher = [str(built), "supervise"]
        logs.prepare(directory, fifos=kind != "native")
        nofile = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        command = [*launcher, str(directory), "1", nofile, str(max_bytes), str(keep), "0", "0"]
        stderr_name = None
    elif kind == "copytruncate":
        command = ["sh", "-c", f'exec "$@" >>{directory}/stdout.log', "sh"]
        stderr_name = "stderr"

        def rotate() -> None:  # what rotate_forever does, every 5 s, in a thread of its own
            while not rotation_done.wait(5.0):
                logs.rotate_all(scratch, max_bytes, keep)

        rotator = threading.Thread(target=rotate)
        rotator.start()
    elif kind == "s6-log":
        if shutil.which("s6-log") is None:
            return None
        command = ["sh", "-c", f'"$@" | s6-log -b n{keep} s{max_bytes} l0 {directory}/log', "sh"]
        stderr_name = "stderr"
    elif kind == "svlogd":
        if shutil.which("svlogd") is None:
            return None
        (directory / "log").mkdir()
        (directory / "log" / "config").write_text(f"s{max_bytes}\nn{keep}\n")
        command = ["sh", "-c", f'"$@" | svlogd {directory}/log', "sh"]
        stderr_name = "stderr"
    else:
        raise ValueError(kind)
    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(directory, stop, peak))
    sampler.start()
    err = subprocess.PIPE if stderr_name else None
    process = subprocess.Popen([*command, *writer], stdout=subprocess.PIPE, stderr=err)
    time.sleep(min(1.0, seconds / 2))
    own = {process.pid}
    writer_pss = 0
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.pid).children(recursive=True):
            if "python" not in child.name():
                writer_pss += pss_kib(child.pid)
    if kind in SUPERVISED:
        writer_pss += pss_kib(process.pid)
    _, stderr = process.communicate()
    own.clear()
    stop.set()
    sampler.join()
    rotation_done.set()
    if rotator is not None:
        rotator.join()
    if kind in SUPERVISED:
        report = "".join(p.read_text() for p in sorted(directory.glob("stderr.*.log")))
    else:
        report = stderr.decode()
    sent, elapsed = report.split()
    if kind in SUPERVISED:
        first, data = streams.read_range(directory, "stdout", 0, 1 << 30)
        ends_whole = data.endswith(b"end") and first + len(data) == int(sent)
    else:
        newest = max((p for p in directory.rglob("*") if p.is_file() and p.name != "config"), key=_mtime)
        ends_whole = newest.read_bytes().endswith(b"end")
    return Figure(
        kind, peak[0], max_bytes * (1 + keep), int(sent) / float(elapsed) / 1e6, writer_pss, ends_whole
    )


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def line(figure: Figure, rate_mb: float) -> str:
    asked = f"{rate_mb:.0f} MB/s" if rate_mb else "max"
    return (
        f"{figure.writer:13} asked {asked:>8}  reached {figure.achieved_mb_s:6.1f} MB/s  "
        f"peak on disk {figure.peak_bytes / 2**20:7.1f} MiB  bound {figure.bound / 2**20:.0f} MiB  "
        f"({figure.peak_bytes / figure.bound:.2f} x)  writer PSS {figure.writer_pss_kib} KiB  "
        f"last bytes kept: {'yes' if figure.ends_whole else 'NO'}"
    )


def run(kinds: list[str], rate_mb: float, seconds: float, max_bytes: int, keep: int) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-logcap-") as tmp:
        for kind in kinds:
            scratch = Path(tmp) / f"{kind}-{rate_mb}"
            scratch.mkdir()
            figure = measure(
                kind, rate_mb * 1e6, seconds, WorkloadLogsConfig(max_bytes=max_bytes, keep=keep), scratch
            )
            if figure is None:
                print(f"{kind:13} not installed (or not built): skipped")
                continue
            print(line(figure, rate_mb), flush=True)
            figures.append(figure)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate-mb", type=float, default=45.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--keep", type=int, default=3)
    args = parser.parse_args()
    kinds = ["native", "segments", "copytruncate", "s6-log", "svlogd"]
    for rate in (args.rate_mb, 0.0):
        run(kinds, rate, args.seconds, args.max_bytes, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

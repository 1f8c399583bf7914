"""The process executor: runs workloads beside a tiny supervisor, signals them, and learns how they ended.

Contracts (each is relied on by the runtime and tested in tests/integration/test_process_executor.py):
- ``spawn`` returns the workload's pid as soon as it is forked (it enters its own session and process
  group a moment later); it raises :class:`SpawnError` (never anything else) when it cannot start.
- ``wait`` returns when the supervisor has gone, whether or not it is our child (after an agent restart
  it is not); the exit status, if any, is on disk by then.
- ``signal`` is safe at any time, even for a workload that is gone or never started: it checks the
  process start time first, so a recycled pid is never signalled.
- ``outcome`` never invents an exit code: None unless the supervisor wrote one.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal as signals
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psutil

from agent.core.events import Tail
from agent.core.model import ProcessRef
from agent.executors.logs import read_tail
from agent.protocol import Spec

TAIL_BYTES = 4096
SPAWN_TIMEOUT_S = 10.0
# Environment variables a workload inherits from the agent; everything else comes from its spec.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
_START_TIME_TOLERANCE_S = 0.005  # start times are whole clock ticks (10 ms): equal, or another process
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PID_FILE_SLACK_S = 0.05  # wall-clock start times are only as fine as a clock tick


class SpawnError(Exception):
    """The workload could not be started; the message says why in terms of its spec."""


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    stdout: Tail
    stderr: Tail


def _supervisor_script() -> str:
    return str(resources.files("agent.executors").joinpath("supervisor.sh"))


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since boot as the kernel counts it, or None if there is no such pid.

    Read from /proc/PID/stat (clock ticks since boot), not as wall-clock time: a wall-clock start time is
    derived from the boot time, which moves whenever the clock is stepped (NTP, a resumed VM), and a
    workload must not look like a stranger because the clock was corrected.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command may hold spaces and parentheses
    return int(fields[19]) / _CLOCK_TICKS  # field 22, starttime


def is_same_process(pid: int, started: float) -> bool:
    now = start_time(pid) if pid > 0 else None
    return now is not None and abs(now - started) < _START_TIME_TOLERANCE_S


class ProcessExecutor:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "executions"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def run_dir(self, execution_id: str) -> Path:
        return self.root / execution_id

    # --- start ------------------------------------------------------------------------------------

    async def spawn(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        # fork/exec from the event loop thread stalls it under load (cpython#146181): use a worker thread.
        return await asyncio.to_thread(self._spawn, execution_id, attempt, spec)

    def _spawn(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | spec.env
        cwd = spec.working_dir
        if cwd is not None and not Path(cwd).is_dir():
            raise SpawnError(f"working_dir {cwd!r} is not a directory")
        program = spec.command[0]
        if shutil.which(program, path=env.get("PATH")) is None:
            raise SpawnError(f"command {program!r} was not found or is not executable")
        run_dir = self.run_dir(execution_id)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (run_dir / f"pid-{attempt}", run_dir / f"exit-{attempt}"):
                stale.unlink(missing_ok=True)
            with (run_dir / "supervisor.log").open("ab") as supervisor_log:
                supervisor = subprocess.Popen(
                    ["/bin/sh", _supervisor_script(), str(run_dir), str(attempt), *spec.command],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=supervisor_log,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise SpawnError(f"cannot start the supervisor: {exc}") from exc
        assert supervisor.stdout is not None
        with supervisor.stdout:
            ready, _, _ = select.select([supervisor.stdout], [], [], SPAWN_TIMEOUT_S)
            line = supervisor.stdout.readline() if ready else b""
        try:
            pid = int(line)
        except ValueError:
            supervisor.kill()
            supervisor.wait()
            raise SpawnError(f"the supervisor did not report the workload's pid (got {line!r})") from None
        self._children[supervisor.pid] = supervisor
        return ProcessRef(
            attempt=attempt,
            pid=pid,
            started=start_time(pid) or 0.0,
            supervisor_pid=supervisor.pid,
            supervisor_started=start_time(supervisor.pid) or 0.0,
        )

    def find(self, execution_id: str, attempt: int) -> ProcessRef | None:
        """Rebuild the reference of an attempt whose spawn the agent did not live to record.

        None if the attempt never got as far as running its workload (no pid file). A workload that has
        already ended gets a reference that is never alive, so its exit file is read as usual.
        """
        pid_file = self.run_dir(execution_id) / f"pid-{attempt}"
        try:
            pid = int(pid_file.read_text())
            written = pid_file.stat().st_mtime
        except (OSError, ValueError):
            return None
        gone = ProcessRef(attempt=attempt, pid=pid, started=-1.0, supervisor_pid=-1, supervisor_started=-1.0)
        try:
            workload = psutil.Process(pid)
            parent = workload.parent()
            # The supervisor writes the pid file right after the workload starts: a process that started
            # after the file was written is somebody else's that reused the pid. (Wall-clock times here:
            # the file's are; a one-off comparison is not hurt by a clock step long before.)
            if parent is None or workload.create_time() > written + _PID_FILE_SLACK_S:
                return gone
        except psutil.Error:
            return gone
        started, supervisor_started = start_time(pid), start_time(parent.pid)
        if started is None or supervisor_started is None:
            return gone
        return ProcessRef(
            attempt=attempt,
            pid=pid,
            started=started,
            supervisor_pid=parent.pid,
            supervisor_started=supervisor_started,
        )

    def running_attempts(self) -> list[tuple[str, int, Path]]:
        """Every (execution, attempt, pid file) whose workload is alive on this machine right now."""
        found = []
        for pid_file in self.root.glob("*/pid-*"):
            try:
                attempt = int(pid_file.name.removeprefix("pid-"))
            except ValueError:
                continue
            ref = self.find(pid_file.parent.name, attempt)
            if ref is not None and is_same_process(ref.pid, ref.started):
                found.append((pid_file.parent.name, attempt, pid_file))
        return found

    # --- watch ------------------------------------------------------------------------------------

    def is_alive(self, ref: ProcessRef) -> bool:
        """The supervisor is still there: it lives exactly as long as the workload."""
        return is_same_process(ref.supervisor_pid, ref.supervisor_started)

    async def wait(self, ref: ProcessRef) -> None:
        """Return once the supervisor of ``ref`` has exited (and been reaped, if it is our child)."""
        if not self.is_alive(ref):
            self._reap(ref.supervisor_pid)
            return
        try:
            fd = os.pidfd_open(ref.supervisor_pid)
        except ProcessLookupError:
            self._reap(ref.supervisor_pid)
            return
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        try:
            # A pidfd becomes readable when the process exits, child of ours or not.
            loop.add_reader(fd, gone.set)
            if not self.is_alive(ref):  # it may have gone between the check and the pidfd
                gone.set()
            await gone.wait()
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        self._reap(ref.supervisor_pid)

    def _reap(self, supervisor_pid: int) -> None:
        child = self._children.pop(supervisor_pid, None)
        if child is not None:
            child.wait()

    def outcome(self, execution_id: str, attempt: int) -> Outcome:
        run_dir = self.run_dir(execution_id)
        try:
            exit_code: int | None = int((run_dir / f"exit-{attempt}").read_text())
        except (OSError, ValueError):
            exit_code = None
        return Outcome(exit_code, _tail(run_dir / "stdout.log"), _tail(run_dir / "stderr.log"))

    # --- stop -------------------------------------------------------------------------------------

    def signal(self, ref: ProcessRef, name: str) -> bool:
        """Send ``name`` to the workload's process group; False if it is gone (or its pid was reused)."""
        if not is_same_process(ref.pid, ref.started):
            return False
        signum = signals.Signals[name]
        try:
            os.killpg(ref.pid, signum)
        except ProcessLookupError:
            # Within a millisecond of its spawn the workload may not have reached setsid yet, so its group
            # does not exist: it has no children then, and signalling the process alone is the same.
            try:
                os.kill(ref.pid, signum)
            except ProcessLookupError:
                return False
        return True

    def remove(self, execution_id: str) -> None:
        """Delete the execution's directory: its pid and exit files and all its logs, rotated ones too."""
        # Renamed out of the way first: log rotation (executors/logs.py) names files through the run
        # directory's path only, so it cannot add one while rmtree empties the directory (which would make
        # rmtree leave it behind). A directory left by a crash in between goes with the next removal.
        doomed = self.root / f".removing-{execution_id}-{os.urandom(4).hex()}"
        try:
            self.run_dir(execution_id).rename(doomed)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.run_dir(execution_id), ignore_errors=True)
        for path in self.root.glob(".removing-*"):
            shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path) -> Tail:
    data, truncated = read_tail(path, TAIL_BYTES)  # across the latest rotation of the log
    return Tail(data.decode("utf-8", errors="replace"), truncated=truncated)

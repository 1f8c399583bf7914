"""The process executor: runs workloads beside a tiny supervisor, signals them, and learns how they ended.

Contracts (each is relied on by the runtime and tested in tests/integration/test_process_executor.py):
- ``spawn`` returns the workload's pid as soon as it is forked (it enters its own session and process
  group a moment later); it raises :class:`SpawnError` (never anything else) when it cannot start.
- ``wait`` returns when the supervisor has gone, whether or not it is our child (after an agent restart
  it is not); the exit status, if any, is on disk by then.
- ``signal`` is safe at any time, even for a workload that is gone or never started: it checks the
  process start time first, so a recycled pid is never signalled. With a cgroup (agent/executors/cgroups.py)
  it reaches every process in the attempt's cgroup, and ``clear`` returns only once none is left.
- ``outcome`` never invents an exit code: None unless the supervisor wrote one.

Owns the processes and their files under ``state_dir/executions``. It decides nothing and touches neither
the store nor MQTT: the runtime calls it and turns what it reports into events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import select
import shutil
import signal as signals
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import psutil

from agent.config import WorkloadLogsConfig
from agent.core.events import Tail
from agent.core.model import ProcessRef, Usage
from agent.executors import cgroups, logs
from agent.executors.cgroups import Containment, open_containment
from agent.executors.exhaustion import LimitReached, limit_reached
from agent.protocol import Spec
from agent.streams import STREAM_NAMES, end_offset, read_tail

# The files the supervisor writes, a contract between agent versions (docs/upgrade.md): a later agent
# reads every earlier format, as supervisors of the old version outlive an upgrade.
SUPERVISOR_FILES_FORMAT = 2
TAIL_BYTES = 4096
SPAWN_TIMEOUT_S = 10.0
# Environment variables a workload inherits from the agent; everything else comes from its spec.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
OUTPUT_ENV = "RECONCILE_OUTPUT_DIR"  # the attempt's own, empty output directory (docs/protocol.md, Results)
_START_TIME_TOLERANCE_S = 0.005  # start times are whole clock ticks (10 ms): equal, or another process
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PID_FILE_SLACK_S = 0.05
WATCH_POLL_MIN_S = 0.05  # a workload watched without a pidfd is polled, backing off to once a second
WATCH_POLL_MAX_S = 1.0
# Spawns in flight at once. Each thread mostly waits (fork/exec, then the supervisor's pid on a pipe), so
# a few overlap well on any machine; more would only queue on the GIL and the disk.
SPAWN_THREADS = 4
FOUND_KEPT = 1024  # (program, PATH) pairs remembered as found, at most
FD_RESERVE = 128  # descriptors never spent on pidfds: sockets, the store, /proc reads, spawns, probes  # wall-clock start times are only as fine as a clock tick


class SpawnError(Exception):
    """The workload could not be started; the message says why in terms of its spec."""


class ProcessTableError(OSError):
    """/proc could not be read (out of file descriptors, say): whether the process lives is unknown.

    Never evidence that a workload ended: only a missing /proc entry is.
    """


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    stdout: Tail
    stderr: Tail


@dataclass(frozen=True)
class Spawned:
    ref: ProcessRef
    usage: Usage | None  # its cgroup's, right after the spawn; None without a cgroup


@dataclass(frozen=True)
class Remains:
    """What a contained attempt left when its main process had gone: see :meth:`ProcessExecutor.clear`."""

    leftovers: int = 0
    oom_kills: int = 0
    usage: Usage | None = None


@functools.cache
def _supervisor_script() -> str:
    return str(resources.files("agent.executors").joinpath("supervisor.sh"))


# Ids may be "." or "..", or start with a dot as the executor's own ".removing-*" directories do: as a
# directory name such an id would be the executions root, the state directory (whose removal takes the
# database with it) or hidden from the scans. A leading dot is written %2E; ids never hold a "%".
_LEADING_DOT = "%2E"


def dir_name(execution_id: str) -> str:
    """The name of an execution's directory under ``executions/``: the id, unless it starts with a dot."""
    return _LEADING_DOT + execution_id[1:] if execution_id.startswith(".") else execution_id


def execution_of_dir(name: str) -> str:
    return "." + name.removeprefix(_LEADING_DOT) if name.startswith(_LEADING_DOT) else name


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since boot as the kernel counts it, or None if there is no such pid.

    Read from /proc/PID/stat (clock ticks since boot), not as wall-clock time: a wall-clock start time is
    derived from the boot time, which moves whenever the clock is stepped (NTP, a resumed VM), and a
    workload must not look like a stranger because the clock was corrected.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # not pathlib: twice on every spawn
        try:
            stat = os.read(fd, 4096)  # a few hundred bytes: the command in it is 16 at most
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError):
        return None  # no such process: the only answer that means it is gone
    except OSError as exc:
        raise ProcessTableError(exc.errno, f"cannot read /proc/{pid}/stat: {exc.strerror}") from exc
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command may hold spaces and parentheses
    return int(fields[19]) / _CLOCK_TICKS  # field 22, starttime


def is_same_process(pid: int, started: float) -> bool:
    now = start_time(pid) if pid > 0 else None
    return now is not None and abs(now - started) < _START_TIME_TOLERANCE_S


class ProcessExecutor:
    def __init__(
        self,
        state_dir: Path,
        containment: Containment | None = None,
        open_files: int | None = None,
        workload_logs: WorkloadLogsConfig | None = None,
        native_supervisor: Path | None = None,
    ) -> None:
        """``open_files``: the soft open-files limit each workload gets (default: the agent's own now);
        ``workload_logs``: the bound of its logs (default: the configuration's defaults);
        ``native_supervisor``: the native supervisor (agent/executors/native.py builds it), None for the
        shell supervisor (supervisor.sh) and its shell writers."""
        self.root = state_dir / "executions"
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if open_files is None else open_files
        self._open_files = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
        self.log_limits = workload_logs if workload_logs is not None else WorkloadLogsConfig()
        self.native_supervisor = native_supervisor
        self.containment = containment if containment is not None else open_containment(state_dir)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # The limit the latest spawn failed on, until one succeeds (set from the spawning thread).
        self.limit_reached: LimitReached | None = None
        self._pidfds = 0  # held by watches now
        self._spawner = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="spawn")
        self._found: set[tuple[str, str | None]] = set()  # (program, PATH) found before (_on_path)

    def run_dir(self, execution_id: str) -> Path:
        return self.root / dir_name(execution_id)

    def output_dir(self, execution_id: str, attempt: int) -> Path:
        """The output directory of one attempt; it lives in the run directory and goes with it."""
        return self.run_dir(execution_id) / f"output-{attempt}"

    def _fresh_output_dir(self, execution_id: str, attempt: int) -> Path:
        """An empty output directory for ``attempt``; those of earlier attempts are removed: only the
        attempt whose results are published matters, and a service restarted often must not fill the disk."""
        output = self.output_dir(execution_id, attempt)
        for old in self.run_dir(execution_id).glob("output-*"):
            if old.name != output.name:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)  # left by a spawn of this attempt cut short
        output.mkdir(mode=0o755)
        return output

    # --- start ------------------------------------------------------------------------------------

    async def spawn(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        return (await self.launch(execution_id, attempt, spec)).ref

    async def launch(self, execution_id: str, attempt: int, spec: Spec) -> Spawned:
        """Spawn, and sample the new attempt's usage on the way (off the event loop, where the decision
        that follows would otherwise read it)."""
        return await asyncio.wrap_future(self.launch_soon(execution_id, attempt, spec))

    def launch_soon(self, execution_id: str, attempt: int, spec: Spec) -> Future[Spawned]:
        """:meth:`launch` started now, from any thread: its future resolves in the spawning thread."""
        # fork/exec from the event loop thread stalls it under load (cpython#146181): worker threads of
        # the executor's own, so a burst of spawns neither waits behind nor starves other thread work.
        launched = self._spawner.submit(self._spawn, execution_id, attempt, spec)
        # The spawning thread needs the GIL for its first steps, and the caller (the event loop) would
        # hold it through the rest of the decision's effects and the publisher's turn, a millisecond on
        # the way to `validating`; sched_yield hands it over now (it releases the GIL), and the thread gives
        # it back at its first system call. Not time.sleep(0): libfaketime refuses a zero sleep with EINVAL
        # (tests/integration/test_clock_jumps.py). Through a burst too: the spawns are what the burst waits
        # for (1000 at once: 3.5 s with it, 4.1-4.3 s handing over for a lone spawn only).
        os.sched_yield()
        return launched

    def _spawn(self, execution_id: str, attempt: int, spec: Spec) -> Spawned:
        try:
            ref = self._start(execution_id, attempt, spec)
        except SpawnError:
            raise
        except Exception as exc:  # the contract: whatever goes wrong, the caller gets a SpawnError
            raise SpawnError(f"cannot start the workload: {type(exc).__name__}: {exc}") from exc
        return Spawned(ref, self.usage(ref, time.time()))

    def _start(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | spec.env
        env[OUTPUT_ENV] = str(self.output_dir(execution_id, attempt).absolute())
        cwd = spec.working_dir
        if cwd is not None:
            try:
                is_dir = Path(cwd).is_dir()
            except (OSError, ValueError) as exc:  # too long, a NUL byte
                raise SpawnError(f"working_dir {cwd[:200]!r} cannot be used: {exc}") from exc
            if not is_dir:
                raise SpawnError(f"working_dir {cwd!r} is not a directory")
        problem = logs.writer_problem() if self.native_supervisor is None else None
        if problem is not None:
            raise SpawnError(problem)
        program = spec.command[0]
        if not self._on_path(program, env.get("PATH")):
            raise SpawnError(f"command {program!r} was not found or is not executable")
        run_dir = self.run_dir(execution_id)
        cgroup = self.containment.attempt_cgroup(run_dir.name, attempt)
        try:
            if self._new_run_dir(run_dir):
                # Made just now, so empty: no earlier output, stale files or logs to look for (each look
                # is a system call or a directory listing on the way to `validating`).
                (run_dir / f"output-{attempt}").mkdir(mode=0o755)
                starts = ["0"] * len(STREAM_NAMES)
            else:
                self._fresh_output_dir(execution_id, attempt)
                for stale in (
                    run_dir / f"pid-{attempt}",
                    run_dir / f"exit-{attempt}",
                    run_dir / f"cgroup-{attempt}",
                ):
                    stale.unlink(missing_ok=True)
                starts = [str(end_offset(run_dir, stream)) for stream in STREAM_NAMES]
            if cgroup is not None:
                self._prepare_cgroup(cgroup, run_dir / f"cgroup-{attempt}", spec)
            native = self.native_supervisor
            if native is None:  # the native supervisor writes the format marker with its first segment
                logs.prepare(run_dir)
            limits = self.log_limits
            # The same arguments for both (supervisor.sh's header); the native one takes a mode word, and
            # opens supervisor.log itself when it has something to say (a file less per spawn).
            launcher = [str(native), "supervise"] if native is not None else ["/bin/sh", _supervisor_script()]
            with _supervisor_log(run_dir, native is None) as supervisor_log:
                supervisor = subprocess.Popen(
                    [
                        *launcher,
                        str(run_dir),
                        str(attempt),
                        self._open_files,
                        str(limits.max_bytes),
                        str(limits.keep),
                        *starts,
                        *spec.command,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=supervisor_log,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            self._drop_cgroup(cgroup)
            raise self._failed("cannot start the supervisor", exc) from exc
        pid: int | None = None
        try:
            pid = _read_pid(supervisor)
            ref = ProcessRef(
                attempt=attempt,
                pid=pid,
                started=start_time(pid) or 0.0,
                supervisor_pid=supervisor.pid,
                supervisor_started=start_time(supervisor.pid) or 0.0,
                cgroup=None if cgroup is None else str(cgroup),
            )
        except BaseException:
            # Nothing half-started may outlive a failed spawn: the caller will count it as not running.
            _abandon(supervisor, pid)
            self._drop_cgroup(cgroup)
            raise
        self._children[supervisor.pid] = supervisor
        self.limit_reached = None
        return ref

    def _on_path(self, program: str, path: str | None) -> bool:
        """Whether ``program`` is found on ``path``. What was found is remembered (a search is a system call
        per directory, on every spawn); what was not is looked for again, so a program installed since is
        found. One removed since is reported by the supervisor instead (exit 127), as it would be if it
        were removed while it spawns."""
        key = (program, path)
        if key in self._found:
            return True
        if shutil.which(program, path=path) is None:
            return False
        if len(self._found) >= FOUND_KEPT:
            self._found.clear()
        self._found.add(key)  # from the spawning threads: a set's add and lookup are atomic
        return True

    def _new_run_dir(self, run_dir: Path) -> bool:
        """Make ``run_dir`` if it is not there; whether it was made now (and so is empty)."""
        try:
            run_dir.mkdir()
        except FileExistsError:
            return False
        except FileNotFoundError:  # the first spawn under this state directory
            self.root.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
        return True

    def _failed(self, what: str, exc: OSError) -> SpawnError:
        """The error of a spawn that ``exc`` stopped, naming the node's limit if one was reached."""
        reached = limit_reached(exc, time.time())
        if reached is None:
            return SpawnError(f"{what}: {exc}")
        self.limit_reached = reached
        return SpawnError(f"{what}: {reached.message} ({exc.strerror or exc})")

    def _prepare_cgroup(self, cgroup: Path, record: Path, spec: Spec) -> None:
        """Create the attempt's cgroup with its limits and name it in ``cgroup-N``, before the supervisor
        starts: the supervisor's child joins it before its first instruction (supervisor.sh), and a
        re-adoption finds it by that file."""
        limits = spec.resources.values if spec.resources is not None else {}
        try:
            cgroups.create(cgroup, self.containment.controllers, limits)
            record.write_text(f"{cgroup}\n")
        except OSError as exc:
            self._drop_cgroup(cgroup)
            raise self._failed("cannot create the workload's cgroup", exc) from exc

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
        cgroup = self.recorded_cgroup(execution_id, attempt)
        gone = ProcessRef(
            attempt=attempt, pid=pid, started=-1.0, supervisor_pid=-1, supervisor_started=-1.0, cgroup=cgroup
        )
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
            cgroup=cgroup,
        )

    def recorded_cgroup(self, execution_id: str, attempt: int) -> str | None:
        """The cgroup an attempt was given (its cgroup-N file), or None."""
        try:
            return (self.run_dir(execution_id) / f"cgroup-{attempt}").read_text().strip() or None
        except OSError:
            return None

    def running_attempts(self) -> list[tuple[str, int, Path]]:
        """Every (execution, attempt, pid file) whose workload is alive on this machine right now."""
        found = []
        for pid_file in self.root.glob("*/pid-*"):
            try:
                attempt = int(pid_file.name.removeprefix("pid-"))
            except ValueError:
                continue
            execution_id = execution_of_dir(pid_file.parent.name)
            ref = self.find(execution_id, attempt)
            if ref is not None and is_same_process(ref.pid, ref.started):
                found.append((execution_id, attempt, pid_file))
        return found

    # --- watch ------------------------------------------------------------------------------------

    def is_alive(self, ref: ProcessRef) -> bool:
        """The supervisor is still there: it lives exactly as long as the workload."""
        return is_same_process(ref.supervisor_pid, ref.supervisor_started)

    async def wait(self, ref: ProcessRef) -> None:
        """Return once the supervisor of ``ref`` has exited (and been reaped, if it is our child).

        Never blocks the event loop. Each watch holds a pidfd while descriptors are plentiful; past the
        budget (the open-files limit less a reserve for sockets, the store, /proc reads and spawns) a
        workload is polled instead, at most a second apart, so a node with more workloads than
        descriptors keeps every one watched and keeps the descriptors it needs to work. An error
        reading /proc (EMFILE, say) means looking again later, never that the workload ended.
        """
        delay = WATCH_POLL_MIN_S
        while True:
            fd = None
            try:
                if self._gone(ref):
                    break
                if self._pidfds < _pidfd_budget():
                    fd = os.pidfd_open(ref.supervisor_pid)
            except ProcessLookupError:
                break
            except OSError:  # EMFILE, ENFILE, ENOMEM, an unreadable /proc: look again later
                fd = None
            if fd is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_POLL_MAX_S)
                continue
            self._pidfds += 1
            try:
                await _readable(fd)  # a pidfd becomes readable when the process exits, child or not
            finally:
                os.close(fd)
                self._pidfds -= 1
            break
        self._reap(ref.supervisor_pid)

    def _gone(self, ref: ProcessRef) -> bool:
        """The supervisor has exited; for our own child asked of waitpid, which needs no descriptor."""
        child = self._children.get(ref.supervisor_pid)
        if child is not None:
            return child.poll() is not None
        return not self.is_alive(ref)

    def _reap(self, supervisor_pid: int) -> None:
        """Collect the exit of a supervisor that is our child; never waits (it has exited by now)."""
        child = self._children.get(supervisor_pid)
        if child is not None and child.poll() is not None:
            del self._children[supervisor_pid]

    def outcome(self, execution_id: str, attempt: int) -> Outcome:
        """How the attempt ended; raises OSError if the exit file exists but cannot be read now."""
        run_dir = self.run_dir(execution_id)
        try:
            exit_code: int | None = int((run_dir / f"exit-{attempt}").read_text())
        except FileNotFoundError:
            exit_code = None  # never written: the supervisor did not see its workload end
        except ValueError:
            exit_code = None  # written atomically, so this is damage, not a code
        stdout, stderr = (_tail(run_dir, stream) for stream in STREAM_NAMES)
        return Outcome(exit_code, stdout, stderr)

    # --- stop -------------------------------------------------------------------------------------

    def signal(self, ref: ProcessRef, name: str) -> bool:
        """Send ``name`` to every process of the workload; False if none is left (or its pid was reused).

        With a cgroup, that is every process in it, wherever it went (``setsid``, double forks), and
        SIGKILL goes through ``cgroup.kill``; without, the workload's process group.
        """
        signum = signals.Signals[name]
        if ref.cgroup is None:
            return self._signal_group(ref, signum)
        cgroup = Path(ref.cgroup)
        # Looked up first: if it joins the cgroup just after cgroup.procs is read, cgroup.kill kills it
        # and its supervisor may reap it before it could be looked up again.
        ours = is_same_process(ref.pid, ref.started)
        if signum == signals.SIGKILL:
            delivered = set(cgroups.procs(cgroup))  # read first: killed, they leave it
            cgroups.kill(cgroup)
        else:
            delivered = cgroups.signal_all(cgroup, signum)
        # Within a moment of its spawn the workload may not have joined its cgroup yet (or joined after
        # cgroup.procs was read): it has no children then, and signalling it alone is the same. Once, as
        # a second SIGTERM can mean "hurry"; SIGKILL goes to the cgroup again for what it forked meanwhile.
        if ref.pid not in delivered and ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, signum)
                if signum == signals.SIGKILL:
                    cgroups.kill(cgroup)
            delivered.add(ref.pid)  # signalled here, or gone already (killed through the cgroup)
        return bool(delivered)

    def _signal_group(self, ref: ProcessRef, signum: int) -> bool:
        if not is_same_process(ref.pid, ref.started):
            return False
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

    async def clear(self, ref: ProcessRef, stopping: Callable[[], bool]) -> Remains:
        """After the supervisor has gone: wait until nothing of the attempt is left, and remove its cgroup.

        Processes still in the cgroup are killed at once, unless ``stopping()``: then the stop's grace
        period (and its SIGKILL, through :meth:`signal`) runs its course. Nothing to do without a cgroup.
        """
        if ref.cgroup is None:
            return Remains()
        cgroup = Path(ref.cgroup)
        leftovers = len(cgroups.procs(cgroup))
        if leftovers and not stopping():
            cgroups.kill(cgroup)
        await cgroups.wait_empty(cgroup)
        remains = Remains(leftovers, cgroups.oom_kills(cgroup), self.usage(ref, time.time()))
        cgroups.remove(cgroup)
        return remains

    def usage(self, ref: ProcessRef, at: float) -> Usage | None:
        """What the attempt's cgroup has used so far; None without a cgroup (or once it is removed)."""
        if ref.cgroup is None:
            return None
        cgroup = Path(ref.cgroup)
        try:
            return Usage(
                cpu_seconds=cgroups.cpu_seconds(cgroup),
                processes=len(cgroups.procs(cgroup)),
                memory_bytes=cgroups.memory_bytes(cgroup),
                at=at,
            )
        except (OSError, ValueError):
            return None

    def orphan_cgroups(self, known: set[str]) -> list[Path]:
        """Attempt cgroups no reference names: left by a crash between their creation and the spawn's record."""
        workloads = self.containment.workloads
        if workloads is None:
            return []
        return [d for d in workloads.iterdir() if d.is_dir() and str(d) not in known]

    async def discard(self, cgroup: Path) -> None:
        """Kill whatever is in ``cgroup``, wait until it is empty, and remove it."""
        cgroups.kill(cgroup)
        await cgroups.wait_empty(cgroup, kill_each_round=True)
        cgroups.remove(cgroup)

    def release(self) -> None:
        """On a clean exit: remove this agent's workloads cgroup if no workload is left in it."""
        self._spawner.shutdown(wait=False, cancel_futures=True)
        if self.containment.workloads is not None:
            cgroups.release(self.containment.workloads)

    def _drop_cgroup(self, cgroup: Path | None) -> None:
        """Remove the cgroup of a spawn that failed (its processes, if any, were killed by then)."""
        if cgroup is not None:
            with contextlib.suppress(OSError):  # else the sweep at the next start removes it
                cgroups.discard_now(cgroup)

    def remove(self, execution_id: str) -> None:
        """Delete the execution's directory: its pid and exit files, all its logs (rotated ones too) and its
        output directories."""
        # Renamed out of the way first: log rotation (executors/logs.py) names files through the run
        # directory's path only, so it cannot add one while rmtree empties the directory (which would make
        # rmtree leave it behind). A directory left by a crash in between goes with the next removal.
        doomed = self.root / f".removing-{dir_name(execution_id)}-{os.urandom(4).hex()}"
        try:
            self.run_dir(execution_id).rename(doomed)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.run_dir(execution_id), ignore_errors=True)
        for path in self.root.glob(".removing-*"):
            shutil.rmtree(path, ignore_errors=True)


def _pidfd_budget() -> int:
    """How many pidfds watches may hold: read each time, as the limit may be raised while running."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 20


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_reader(fd)


@contextlib.contextmanager
def _supervisor_log(run_dir: Path, opened: bool) -> Iterator[IO[bytes] | int]:
    """The supervisor's stderr: ``supervisor.log`` opened here if ``opened``, else /dev/null."""
    if not opened:
        yield subprocess.DEVNULL
        return
    with (run_dir / "supervisor.log").open("ab") as log:
        yield log


def _read_pid(supervisor: subprocess.Popen[bytes]) -> int:
    """The workload's pid, the supervisor's first line. poll(), not select(): fds may be above 1023."""
    assert supervisor.stdout is not None
    with supervisor.stdout:
        poller = select.poll()
        poller.register(supervisor.stdout, select.POLLIN)
        ready = poller.poll(SPAWN_TIMEOUT_S * 1000)
        line = supervisor.stdout.readline() if ready else b""
    try:
        return int(line)
    except ValueError:
        raise SpawnError(f"the supervisor did not report the workload's pid (got {line!r})") from None


def _abandon(supervisor: subprocess.Popen[bytes], pid: int | None) -> None:
    """Kill a half-started workload and its supervisor, and reap the supervisor (a worker thread's job)."""
    if pid is not None:
        for kill in (os.killpg, os.kill):  # its own group once it reached setsid, else the pid alone
            with contextlib.suppress(OSError):
                kill(pid, signals.SIGKILL)
    with contextlib.suppress(OSError):
        supervisor.kill()
    supervisor.wait()


def _tail(run_dir: Path, stream: str) -> Tail:
    data, truncated = read_tail(run_dir, stream, TAIL_BYTES)  # across the log's segments
    return Tail(data.decode("utf-8", errors="replace"), truncated=truncated)

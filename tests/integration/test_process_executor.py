"""The process executor's contracts, exercised directly: real supervisors, real workloads, no MQTT.

Every contract holds with both supervisors, the native one (agent/executors/supervisor.c) and the shell
one it falls back on (supervisor.sh), and with either containment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.core.model import ProcessRef
from agent.executors import cgroups, logs
from agent.executors.cgroups import Containment
from agent.executors.process import (
    TAIL_BYTES,
    ProcessExecutor,
    ProcessTableError,
    SpawnError,
    _supervisor_script,
    is_same_process,
    start_time,
)
from agent.protocol import Spec
from agent.streams import end_offset
from tests.support.agent import pid_alive
from tests.support.wait import wait_until, wait_until_sync

EID = "exec-1"


def spec(command: list[str], **fields: Any) -> Spec:
    return Spec.model_validate({"command": command, **fields})


@pytest.fixture(params=["native", "shell"])
def supervisor(request: pytest.FixtureRequest) -> Path | None:
    """The native supervisor, or None for the shell one."""
    return request.getfixturevalue("native_supervisor") if request.param == "native" else None


@pytest.fixture(params=["cgroup", "process-group"])
def executor(state_dir: Path, request: pytest.FixtureRequest, supervisor: Path | None) -> ProcessExecutor:
    """Each contract holds with either containment: a cgroup per attempt, or the fallback."""
    if request.param == "process-group":
        return ProcessExecutor(
            state_dir,
            Containment(kind="process-group", reason="chosen by the test"),
            native_supervisor=supervisor,
        )
    executor = ProcessExecutor(state_dir, native_supervisor=supervisor)
    if executor.containment.kind != "cgroup":
        pytest.skip(f"not run: this machine gives the agent no cgroups ({executor.containment.reason})")
    return executor


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


async def finished(executor: ProcessExecutor, ref: ProcessRef, timeout: float = 10.0) -> None:
    """``executor.wait(ref)``, bounded: a workload that ignored its signal fails the test, not the run."""
    try:
        await asyncio.wait_for(executor.wait(ref), timeout)
    except TimeoutError:
        raise AssertionError(f"workload {ref.pid} still running after {timeout}s") from None


def wait_exec(pid: int, argv: list[str]) -> None:
    """The workload has replaced the supervisor's shell with its own program (and its own signal setup)."""
    wait_until_sync(lambda: cmdline(pid) == argv, timeout=10, what=f"pid {pid} running {argv}")


async def test_spawn_runs_the_workload_as_its_own_session_and_group_leader_beside_a_supervisor(
    executor: ProcessExecutor,
) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))

    # spawn returns as soon as the workload is forked; it leads its own session and group a moment later.
    wait_until_sync(
        lambda: os.getpgid(ref.pid) == ref.pid and os.getsid(ref.pid) == ref.pid,
        timeout=5,
        what="workload leads its own session and process group",
    )
    assert ref.supervisor_pid != ref.pid
    assert psutil.Process(ref.pid).ppid() == ref.supervisor_pid  # the supervisor reaps it
    assert os.getsid(ref.supervisor_pid) != ref.pid  # a signal to the workload's group misses it
    assert os.getpgid(ref.supervisor_pid) != ref.pid
    assert ref.attempt == 1
    assert ref.compute_reference == f"pid:{ref.pid}"
    assert executor.is_alive(ref)
    pid_file = executor.run_dir(EID) / "pid-1"
    wait_until_sync(pid_file.exists, timeout=5, what="pid file")
    assert pid_file.read_text().strip() == str(ref.pid)

    assert executor.signal(ref, "SIGKILL")
    await finished(executor, ref)
    assert executor.outcome(EID, 1).exit_code == 128 + 9


async def test_sigkill_right_after_spawn_is_delivered(executor: ProcessExecutor) -> None:
    """Even before the workload has its own group, a signal reaches it (it has no children yet)."""
    for attempt in range(1, 6):
        ref = await executor.spawn(EID, attempt, spec(["sleep", "300"]))
        assert executor.signal(ref, "SIGKILL")
        await finished(executor, ref)
        assert executor.outcome(EID, attempt).exit_code == 128 + 9


async def test_a_workload_killed_right_after_its_spawn_leaves_no_process_behind(
    executor: ProcessExecutor,
) -> None:
    """With the shell supervisor, a workload killed before it opened its FIFOs would leave a log writer
    blocked in its open for ever; the native one must not be left waiting either."""
    refs = []
    for attempt in range(1, 6):
        ref = await executor.spawn(EID, attempt, spec(["sleep", "300"]))
        assert executor.signal(ref, "SIGKILL")
        await finished(executor, ref)
        refs.append(ref)
    run_dir = str(executor.root)

    def ours() -> list[str]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if any(run_dir in arg for arg in process.info["cmdline"] or []):
                found.append(" ".join(process.info["cmdline"]))
        return found

    await wait_until(lambda: not ours(), timeout=10, what=f"no process left in {run_dir}: {ours()}")


async def test_wait_returns_after_exit_and_outcome_has_the_exit_code_and_output(
    executor: ProcessExecutor,
) -> None:
    ref = await executor.spawn(EID, 1, spec(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    await finished(executor, ref)
    outcome = executor.outcome(EID, 1)

    assert not executor.is_alive(ref)
    assert not pid_alive(ref.pid)
    assert outcome.exit_code == 3
    assert (outcome.stdout.text, outcome.stdout.truncated) == ("out\n", False)
    assert (outcome.stderr.text, outcome.stderr.truncated) == ("err\n", False)


async def test_output_tails_are_the_last_4096_bytes_and_say_they_were_truncated(
    executor: ProcessExecutor,
) -> None:
    # 10000 x "a" then "END" on stdout; exactly 4096 bytes on stderr (not truncated).
    script = "head -c 10000 /dev/zero | tr '\\0' a; printf END; head -c 4096 /dev/zero | tr '\\0' b >&2"
    ref = await executor.spawn(EID, 1, spec(["sh", "-c", script]))
    await finished(executor, ref)
    outcome = executor.outcome(EID, 1)

    assert TAIL_BYTES == 4096
    assert outcome.exit_code == 0
    assert len(outcome.stdout.text) == 4096
    assert outcome.stdout.text.endswith("aaaEND")
    assert outcome.stdout.truncated
    assert outcome.stderr.text == "b" * 4096
    assert not outcome.stderr.truncated


@pytest.mark.parametrize(("signame", "number"), [("SIGTERM", 15), ("SIGKILL", 9), ("SIGINT", 2)])
async def test_death_by_signal_n_is_exit_code_128_plus_n(
    executor: ProcessExecutor, signame: str, number: int
) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])

    assert executor.signal(ref, signame)
    await finished(executor, ref)

    assert executor.outcome(EID, 1).exit_code == 128 + number


async def test_signal_reaches_the_whole_process_group_including_grandchildren(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {marker}.tmp; mv {marker}.tmp {marker}; wait"
    ref = await executor.spawn(EID, 1, spec(["sh", "-c", script]))
    grandchild = int(wait_until_sync(lambda: marker.exists() and marker.read_text(), timeout=10))
    assert os.getpgid(grandchild) == ref.pid

    assert executor.signal(ref, "SIGTERM")
    await finished(executor, ref)

    wait_until_sync(lambda: not pid_alive(grandchild), timeout=5, what="grandchild gone")
    assert executor.outcome(EID, 1).exit_code == 128 + 15


async def test_signal_refuses_a_ref_whose_start_time_does_not_match_the_pid(
    executor: ProcessExecutor,
) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])
    # Same pid, another start time: what a recycled pid looks like. (With a cgroup a pid is never what is
    # signalled: every process in the attempt's cgroup is, whatever became of the first one's pid.)
    impostor = ref.model_copy(update={"started": ref.started - 1000.0, "cgroup": None})

    assert executor.signal(impostor, "SIGKILL") is False
    assert pid_alive(ref.pid)
    # Proof that nothing was sent: the SIGKILL would have been pending before this SIGTERM and won.
    assert executor.signal(ref, "SIGTERM")
    await finished(executor, ref)
    assert executor.outcome(EID, 1).exit_code == 128 + 15


async def test_signal_after_the_process_is_gone_returns_false(executor: ProcessExecutor) -> None:
    ref = await executor.spawn(EID, 1, spec(["true"]))
    await finished(executor, ref)

    assert executor.signal(ref, "SIGTERM") is False
    assert executor.signal(ref, "SIGKILL") is False
    assert executor.outcome(EID, 1).exit_code == 0


async def test_outcome_without_an_exit_file_is_none_never_a_made_up_zero(
    executor: ProcessExecutor,
) -> None:
    assert executor.outcome(EID, 7).exit_code is None  # nothing at all on disk

    # The supervisor dies (SIGKILL cannot be ignored) before it can record anything, then the workload ends.
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])
    os.kill(ref.supervisor_pid, signal.SIGKILL)
    await finished(executor, ref)
    assert pid_alive(ref.pid)  # the workload is in its own session: the supervisor's death spares it
    os.killpg(ref.pid, signal.SIGKILL)
    wait_until_sync(lambda: not pid_alive(ref.pid), timeout=5, what="workload gone")

    assert executor.outcome(EID, 1).exit_code is None
    assert not (executor.run_dir(EID) / "exit-1").exists()


async def test_spawn_error_for_a_missing_command(executor: ProcessExecutor) -> None:
    with pytest.raises(SpawnError, match="/no/such/binary"):
        await executor.spawn(EID, 1, spec(["/no/such/binary", "x"]))
    with pytest.raises(SpawnError, match="no-such-program-here"):
        await executor.spawn(EID, 2, spec(["no-such-program-here"]))


async def test_spawn_error_for_a_missing_working_dir(executor: ProcessExecutor, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SpawnError, match="working_dir"):
        await executor.spawn(EID, 1, spec(["true"], working_dir=str(missing)))


async def test_working_dir_is_used(executor: ProcessExecutor, tmp_path: Path) -> None:
    ref = await executor.spawn(EID, 1, spec(["pwd"], working_dir=str(tmp_path)))
    await finished(executor, ref)
    assert executor.outcome(EID, 1).stdout.text == f"{tmp_path}\n"


async def test_the_workload_gets_default_signal_dispositions(executor: ProcessExecutor) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])

    status = proc_status(ref.pid)
    ignored, blocked = int(status["SigIgn"], 16), int(status["SigBlk"], 16)
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        assert not ignored & (1 << (signum - 1)), f"{signum.name} is ignored by the workload: {ignored:#x}"
    assert (ignored, blocked) == (0, 0), f"the workload ignores {ignored:#x}, blocks {blocked:#x}"
    # ... while the supervisor ignores these on purpose.
    supervisor_ignored = int(proc_status(ref.supervisor_pid)["SigIgn"], 16)
    for signum in SUPERVISOR_IGNORES:
        assert supervisor_ignored & (1 << (signum - 1)), f"the supervisor does not ignore {signum.name}"


SUPERVISOR_IGNORES = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGPIPE,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


async def test_sigterm_right_after_spawn_is_not_ignored(executor: ProcessExecutor) -> None:
    """A stop that arrives while the workload is being spawned is signalled as soon as spawn returns.

    The workload must never be in a state where its stop signal is ignored once its pid is known.
    Racy by nature, so it tries many times: with the bug about every second attempt loses the signal.
    """
    for attempt in range(1, 21):
        ref = await executor.spawn(EID, attempt, spec(["sleep", "300"]))
        assert executor.signal(ref, "SIGTERM")
        try:
            await wait_until(
                lambda ref=ref: not pid_alive(ref.pid), timeout=2, what=f"attempt {attempt} stopped by TERM"
            )
        finally:
            executor.signal(ref, "SIGKILL")
            await finished(executor, ref)
        assert executor.outcome(EID, attempt).exit_code == 128 + 15


async def test_env_from_the_spec_reaches_the_workload(executor: ProcessExecutor) -> None:
    script = 'printf "%s|%s" "$GREETING" "${RECONCILE_TEST_SECRET-unset}"'
    os.environ["RECONCILE_TEST_SECRET"] = "agent-only"
    try:
        ref = await executor.spawn(EID, 1, spec(["sh", "-c", script], env={"GREETING": "hello world"}))
    finally:
        del os.environ["RECONCILE_TEST_SECRET"]
    await finished(executor, ref)

    # The spec's variables arrive; the agent's own environment is not leaked beyond a short allowlist.
    assert executor.outcome(EID, 1).stdout.text == "hello world|unset"


async def test_the_supervisor_ignores_sigterm_and_still_records_the_exit_code(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.02; done; exit 4"
    ref = await executor.spawn(EID, 1, spec(["sh", "-c", script]))

    for signum in SUPERVISOR_IGNORES:
        os.kill(ref.supervisor_pid, signum)
    assert executor.is_alive(ref)
    go.touch()
    await finished(executor, ref)

    # Had a signal killed the supervisor, nobody would have written the exit file.
    assert executor.outcome(EID, 1).exit_code == 4


async def test_find_rebuilds_the_ref_from_the_pid_file(executor: ProcessExecutor, state_dir: Path) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    pid_file = executor.run_dir(EID) / "pid-1"
    wait_until_sync(pid_file.exists, timeout=5, what="pid file")  # written just after spawn returns
    fresh = ProcessExecutor(state_dir)  # as after an agent restart: nothing in memory

    found = fresh.find(EID, 1)

    assert found is not None
    assert (found.pid, found.supervisor_pid, found.attempt) == (ref.pid, ref.supervisor_pid, 1)
    assert found.started == pytest.approx(ref.started, abs=0.05)
    assert found.supervisor_started == pytest.approx(ref.supervisor_started, abs=0.05)
    assert fresh.is_alive(found)
    assert fresh.find(EID, 2) is None  # that attempt never ran
    assert fresh.find("unknown", 1) is None

    wait_exec(found.pid, ["sleep", "300"])
    # The rebuilt ref works: signal through it and wait on a supervisor that is not the fresh one's child.
    assert fresh.signal(found, "SIGTERM")
    await finished(fresh, found)
    assert fresh.outcome(EID, 1).exit_code == 128 + 15
    executor._reap(ref.supervisor_pid)  # the first executor's child: reap it

    # Once the workload is gone, find() still gives a ref, one that is never alive.
    gone = fresh.find(EID, 1)
    assert gone is not None
    assert not fresh.is_alive(gone)
    assert fresh.signal(gone, "SIGKILL") is False


async def test_supervisor_memory_while_waiting(executor: ProcessExecutor) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])
    rollup = Path(f"/proc/{ref.supervisor_pid}/smaps_rollup").read_text()
    pss_kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    print(f"supervisor PSS while waiting: {pss_kib} KiB")
    assert 0 < pss_kib < 2048


def test_a_fake_ref_for_a_pid_that_does_not_exist_is_never_signalled(executor: ProcessExecutor) -> None:
    ref = ProcessRef(attempt=1, pid=2**22 + 12345, started=1.0, supervisor_pid=-1, supervisor_started=0.0)
    assert executor.signal(ref, "SIGTERM") is False
    assert not executor.is_alive(ref)


def test_start_time_is_the_kernels_and_survives_odd_command_names(tmp_path: Path) -> None:
    # A command name may hold spaces and parentheses: the parser must split after the last ')'.
    odd = tmp_path / "we ird) 1 2 (name"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    process = subprocess.Popen([str(odd), "30"])
    try:
        started = start_time(process.pid)
        assert started is not None
        # Seconds since boot, as psutil derives it (its epoch time minus the boot time).
        assert started == pytest.approx(
            psutil.Process(process.pid).create_time() - psutil.boot_time(), abs=0.02
        )
        assert is_same_process(process.pid, started)
        assert not is_same_process(process.pid, started + 0.01)  # one clock tick off is another process
    finally:
        process.kill()
        process.wait()
    assert start_time(process.pid) is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"command": ["sleep\0", "1"]}, "not found"),
        ({"command": ["echo", "\ud800"]}, "surrogate"),
        ({"command": ["true"], "env": {"A=B": "1"}}, "environment variable"),
        ({"command": ["true"], "env": {"A": "\0"}}, "null byte"),
        ({"command": ["true"], "working_dir": "/" + "a" * 300}, "working_dir"),
        ({"command": ["true"], "working_dir": "/tmp\0"}, "working_dir"),
    ],
    ids=["nul-argv0", "surrogate", "equals-in-env-name", "nul-in-env", "long-cwd", "nul-in-cwd"],
)
async def test_a_spec_the_os_refuses_fails_the_spawn_with_spawn_error_only(
    executor: ProcessExecutor, fields: dict[str, Any], words: str
) -> None:
    """A spec stored before these were validated on arrival must still fail cleanly, never hang a spawn."""
    bad = Spec.model_construct(**{**spec(["true"]).__dict__, **fields})
    with pytest.raises(SpawnError, match=words):
        await executor.spawn(EID, 1, bad)


@contextlib.contextmanager
def out_of_descriptors() -> Iterator[None]:
    """Every file descriptor this process may open is open: the next open() fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_descriptors_a_workload_is_still_watched_and_never_taken_for_ended(
    executor: ProcessExecutor,
) -> None:
    ref = await executor.spawn(EID, 1, spec(["sleep", "30"]))
    with out_of_descriptors():
        with pytest.raises(ProcessTableError, match="Too many open files"):
            executor.is_alive(ref)  # cannot look: an error, never "it has gone"
        with pytest.raises(SpawnError, match="Too many open files"):
            await executor.spawn("other", 1, spec(["true"]))
        waiting = asyncio.create_task(executor.wait(ref))
        ticks = 0
        for _ in range(5):  # the loop keeps turning while the watcher cannot open a pidfd
            await asyncio.sleep(0.05)
            ticks += 1
        assert ticks == 5
        assert not waiting.done(), "the watcher took 'cannot open /proc' for 'the workload ended'"
        os.killpg(ref.pid, signal.SIGKILL)
        await asyncio.wait_for(waiting, 10)  # seen without a descriptor: waitpid on our supervisor
    assert executor.outcome(EID, 1).exit_code == 128 + signal.SIGKILL


async def test_ids_with_a_leading_dot_get_directories_of_their_own(
    executor: ProcessExecutor, state_dir: Path
) -> None:
    """'.', '..' and '.removing-x' are valid ids; as directory names they would be the executions root,
    the state directory, or one of the executor's own doomed directories."""
    ids = [".", "..", ".removing-x", "x"]  # "%" is not allowed in ids, so "%2E" names no other
    refs = {i: await executor.spawn(i, 1, spec(["sleep", "30"])) for i in ids[:3]}
    try:
        dirs = {executor.run_dir(i).resolve() for i in ids}
        assert len(dirs) == len(ids)
        assert all(d.parent == executor.root.resolve() for d in dirs)
        await wait_until(  # the supervisor writes pid-N just after it reported the pid
            lambda: sorted(e for e, _, _ in executor.running_attempts()) == sorted(ids[:3]),
            timeout=10,
            what="every attempt found by its pid file",
        )
        (state_dir / "keep").write_text("the state directory's own file")
        executor.remove("..")
        executor.remove(".")
        assert (state_dir / "keep").exists()
        assert executor.run_dir(".removing-x").is_dir()  # another execution's removal left it alone
    finally:
        for ref in refs.values():
            executor.signal(ref, "SIGKILL")
            await finished(executor, ref)


@pytest.mark.parametrize(
    ("interpreter", "code"),
    [("/no/such/interpreter", 127), ("/", 126)],
    ids=["not-found-127", "not-executable-126"],
)
async def test_a_command_the_exec_refuses_exits_as_env_would(
    executor: ProcessExecutor, tmp_path: Path, interpreter: str, code: int
) -> None:
    """Found and executable when the spawn looks (so no SpawnError), refused by execve: ENOENT for a
    missing interpreter, EACCES for a directory."""
    script = tmp_path / "script"
    script.write_text(f"#!{interpreter}\n")
    script.chmod(0o755)
    ref = await executor.spawn(EID, 1, spec([str(script)]))
    await finished(executor, ref)
    outcome = executor.outcome(EID, 1)
    assert outcome.exit_code == code
    assert str(script) in outcome.stderr.text  # said on the workload's own stderr


async def test_the_workload_gets_the_open_files_limit_it_was_given(
    executor: ProcessExecutor, state_dir: Path
) -> None:
    limited = ProcessExecutor(
        state_dir, executor.containment, open_files=123, native_supervisor=executor.native_supervisor
    )
    ref = await limited.spawn(EID, 1, spec(["sh", "-c", "ulimit -S -n"]))
    await finished(limited, ref)
    assert limited.outcome(EID, 1).stdout.text == "123\n"


async def test_the_workload_runs_in_its_cgroup_and_the_supervisor_outside(executor: ProcessExecutor) -> None:
    if executor.containment.kind != "cgroup":
        pytest.skip("no cgroup with this containment")
    ref = await executor.spawn(EID, 1, spec(["sleep", "300"]))
    wait_exec(ref.pid, ["sleep", "300"])
    assert ref.cgroup is not None
    assert ref.pid in cgroups.procs(Path(ref.cgroup))
    assert ref.supervisor_pid not in cgroups.procs(Path(ref.cgroup))
    assert executor.signal(ref, "SIGKILL")
    await finished(executor, ref)
    assert executor.outcome(EID, 1).exit_code == 128 + 9


def launcher(supervisor: Path | None) -> list[str]:
    """How the executor starts a supervisor (agent/executors/process.py)."""
    if supervisor is not None:
        return [str(supervisor), "supervise"]
    return ["/bin/sh", _supervisor_script()]


def test_a_cgroup_that_cannot_be_joined_is_exit_125_and_the_workload_never_runs(
    supervisor: Path | None, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if supervisor is None:
        logs.prepare(run_dir)
    (run_dir / "cgroup-1").write_text(f"{tmp_path / 'not-a-cgroup'}\n")
    ran = tmp_path / "ran"
    done = subprocess.run(
        [*launcher(supervisor), str(run_dir), "1", "64", "4096", "2", "0", "0", "touch", str(ran)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 125, done.stderr
    assert (run_dir / "exit-1").read_text() == "125\n"
    assert not ran.exists()


async def test_the_exit_file_is_written_atomically_once_the_output_is_complete(
    executor: ProcessExecutor,
) -> None:
    size = 3_000_000
    ref = await executor.spawn(EID, 1, spec(["head", "-c", str(size), "/dev/zero"]))
    run_dir = executor.run_dir(EID)
    exit_file = run_dir / "exit-1"
    # Looked at as a reader that does not wait for the supervisor would: the moment the file is there.
    await wait_until(exit_file.exists, timeout=30, what="exit file")
    assert end_offset(run_dir, "stdout") == size
    assert exit_file.read_text() == "0\n"
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    await finished(executor, ref)

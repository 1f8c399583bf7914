"""Processes a test started and left running: found when the session ends, killed, and named.

Workloads outlive the agent by design, so nothing stops them when a test forgets to. A process counts as
the session's when any of these holds (each catches what the others miss):
- it descends from the pytest process (supervisors of in-process agents, agents, brokers, CLI runs);
- its environment carries this session's token (``ENV_TOKEN``, set in the pytest process and inherited
  by whatever it starts with the default environment, even once re-parented to init);
- its command line, working directory or an open file lies under this session's pytest base temporary
  directory: the supervisor runs ``.../supervisor-HASH supervise RUN_DIR ...`` (or ``sh .../supervisor.sh
  RUN_DIR ...``) and a workload writes to
  ``RUN_DIR/stdout.log``, both under a test's ``tmp_path``, although the agent gives them a filtered
  environment and they are re-parented to init once their agent is killed.

Another pytest session on the same machine has its own token and base directory, so it is left alone.

``workloads_under(tmp_path)`` is the per-test form (the ``state_dir`` fixture's teardown): supervisors
and workloads whose run directory lies under that test's directory, found by what they hold open rather
than by the pids in the state directory, which may belong to someone else by the time the test ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.executors import cgroups

ENV_TOKEN = "PYTEST_LEFTOVER_GUARD"  # not RECONCILE_*: the agent reads those as configuration


def new_token() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str
    why: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}  ({self.why})"


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base + os.sep)


RUN_DIRS = f"{os.sep}executions{os.sep}"  # state_dir/executions/ID: a supervisor's RUN_DIR


def _paths(process: psutil.Process) -> list[str]:
    """Its arguments, working directory and open files (what it can read of them)."""
    paths: list[str] = []
    with contextlib.suppress(psutil.Error):
        paths += process.cmdline()
    with contextlib.suppress(psutil.Error):
        paths.append(process.cwd())
    with contextlib.suppress(psutil.Error):
        paths += [f.path for f in process.open_files()]
    return paths


def _why(process: psutil.Process, token: str, base: str, descendants: set[int]) -> str | None:
    """Why ``process`` belongs to this session, or None."""
    if process.pid in descendants:
        return "started by the pytest process"
    with contextlib.suppress(psutil.Error):
        if process.environ().get(ENV_TOKEN) == token:
            return f"carries {ENV_TOKEN}"
    hit = next((p for p in _paths(process) if _under(p, base)), None)
    return None if hit is None else f"holds {hit}"


def workloads_under(root: Path) -> list[Leftover]:
    """Live supervisors and workloads with a run directory under ``root``, and whatever they started.

    The process table is read once: psutil's ``children()`` reads all of it at each call, and a test with
    2000 workloads has some 6000 such processes (its teardown took over ten minutes that way).
    """
    me = os.getpid()
    base = str(root.resolve())
    children: dict[int, list[psutil.Process]] = {}
    hits: list[tuple[psutil.Process, str]] = []
    for process in psutil.process_iter(["ppid"]):
        parent = process.info["ppid"]
        if parent is not None:
            children.setdefault(parent, []).append(process)
        if process.pid == me:  # an in-process agent holds its database there
            continue
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            hit = next((p for p in _paths(process) if _under(p, base) and RUN_DIRS in p[len(base) :]), None)
            if hit is not None:
                hits.append((process, hit))
    found: dict[int, Leftover] = {}
    for process, hit in hits:
        family = [process]
        while family:
            member = family.pop()
            if member.pid in found:
                continue
            with contextlib.suppress(psutil.Error):
                command = " ".join(member.cmdline()) or member.name()
                found[member.pid] = Leftover(member.pid, command, f"run directory {hit}")
            family.extend(children.get(member.pid, ()))
    return list(found.values())


def find(token: str, base_temp: Path) -> list[Leftover]:
    """Live processes (zombies are dead) of this session, other than pytest and its ancestors."""
    me = psutil.Process()
    exempt = {me.pid} | {p.pid for p in me.parents()}
    descendants = {p.pid for p in me.children(recursive=True)}
    base = str(base_temp.resolve())
    found = []
    for process in psutil.process_iter():
        if process.pid in exempt:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            why = _why(process, token, base, descendants)
            if why is not None:
                found.append(Leftover(process.pid, " ".join(process.cmdline()) or process.name(), why))
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return found


def kill(leftovers: list[Leftover]) -> None:
    """SIGKILL each one's whole process group (workloads and supervisors lead their own), else just it."""
    own_group = os.getpgid(0)
    for leftover in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(leftover.pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
            else:  # in pytest's own group (a Popen without a session of its own): not the group
                os.kill(leftover.pid, signal.SIGKILL)
    processes = []
    for leftover in leftovers:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(leftover.pid))
    psutil.wait_procs(processes, timeout=10)


def remove_cgroups(state_dir: Path) -> None:
    """Kill what is left in the cgroups of the agents of ``state_dir`` and remove them (kill -9 tests
    leave them, and the agent keeps them across restarts by design)."""
    workloads = cgroups.workloads_dir(state_dir)
    if workloads is None or not workloads.is_dir():
        return
    for attempt in [d for d in workloads.iterdir() if d.is_dir()]:
        cgroups.discard_now(attempt, timeout_s=10.0)
    cgroups.release(workloads)

"""Containment: a cgroup v2 of its own for every attempt, or the process group where none can be made.

The agent finds the unified hierarchy from /proc/self/cgroup and the mount table (pure v2 hosts have it
at /sys/fs/cgroup, hybrid ones beside the v1 controllers, e.g. /sys/fs/cgroup/unified), and makes its
subtree from its own cgroup (docs/design.md, "Containment"):

- own cgroup the root (a host or container root, shared with everything else): ``/reconcile-agent/``;
- any other (a systemd service with ``Delegate=yes``): that cgroup itself, the agent moving into its
  leaf ``agent/`` first, as a cgroup with controllers enabled for its children may hold no processes.

Below that, ``workloads-<key>/<execution>-<attempt>``, ``key`` from the state directory, so two agents
never share one. Whatever cannot be created leaves the agent on process groups (``process-group``),
logged once with the reason; a controller that cannot be enabled only leaves its limit out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal as signals
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger("agent.cgroups")

# The limit of spec.resources each controller enforces.
LIMIT_CONTROLLERS = {"memory_max_bytes": "memory", "pids_max": "pids", "cpu_max": "cpu"}
CPU_PERIOD_US = 100_000
EMPTY_POLL_MIN_S = 0.005  # cgroup.events is polled: asyncio has no POLLPRI reader, and a stop is rare
EMPTY_POLL_MAX_S = 0.2


class CgroupError(OSError):
    """A cgroup operation failed; the message names the cgroup."""


@dataclass(frozen=True)
class Containment:
    """What this node can contain and limit, and where its workloads' cgroups live."""

    kind: str  # "cgroup" | "process-group"
    workloads: Path | None = None  # the parent of every attempt's cgroup, a directory of the cgroup fs
    controllers: frozenset[str] = field(default_factory=frozenset)  # enabled for each attempt's cgroup
    reason: str = ""  # why process-group

    @property
    def limits(self) -> list[str]:
        """The spec.resources limits this node enforces."""
        return sorted(k for k, c in LIMIT_CONTROLLERS.items() if c in self.controllers)

    def refusal(self, requested: list[str]) -> str | None:
        """Why limits ``requested`` cannot be enforced here, or None."""
        for name in requested:
            if name in self.limits:
                continue
            controller = LIMIT_CONTROLLERS[name]
            if self.kind != "cgroup":
                return (
                    f"{controller} limit requested, but this node has no cgroup for workloads ({self.reason})"
                )
            return f"{controller} limit requested, but this node's cgroup has no {controller} controller"
        return None

    def attempt_cgroup(self, run_name: str, attempt: int) -> Path | None:
        return None if self.workloads is None else self.workloads / f"{run_name}-{attempt}"


def open_containment(state_dir: Path, proc: Path = Path("/proc")) -> Containment:
    """Set up the agent's subtree; never raises: what fails is the reason for ``process-group``."""
    try:
        return _open(state_dir, proc)
    except OSError as exc:
        reason = f"cannot create cgroups: {exc}"
    except _NoCgroup as exc:
        reason = str(exc)
    log.warning("workloads are contained by process groups only", reason=reason)
    return Containment(kind="process-group", reason=reason)


class _NoCgroup(Exception):
    pass


@dataclass(frozen=True)
class _Layout:
    base: Path  # holds every agent's workloads directory (and, if delegated, the agent's leaf)
    workloads: Path  # this agent's: one cgroup per attempt below it
    chain: tuple[Path, ...]  # from the highest cgroup the agent enables controllers in, down to base
    own: Path  # the agent's own cgroup now
    delegated: bool  # base is the agent's own cgroup: the agent moves into base/agent


def _layout(state_dir: Path, proc: Path) -> _Layout:
    own = own_cgroup((proc / "self/cgroup").read_text())
    mount = unified_mount((proc / "self/mountinfo").read_text())
    if own is None or mount is None:
        raise _NoCgroup("no cgroup v2 hierarchy is mounted")
    root, point = mount
    if not (own == root or own.startswith(root.rstrip("/") + "/")):
        raise _NoCgroup(f"this process's cgroup {own} is outside the mounted cgroup2 hierarchy")
    own_dir = point / own[len(root) :].lstrip("/")
    name = "workloads-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    if own_dir == point:  # a host's or container's root: shared, so a subtree of our own beside the rest
        base = point / "reconcile-agent"
        return _Layout(base, base / name, (point, base), own_dir, delegated=False)
    base = own_dir.parent if own_dir.name == "agent" else own_dir
    return _Layout(base, base / name, (base,), own_dir, delegated=True)


def workloads_dir(state_dir: Path, proc: Path = Path("/proc")) -> Path | None:
    """Where the agent of ``state_dir``, started from here, keeps its workloads' cgroups (None: nowhere)."""
    try:
        return _layout(state_dir, proc).workloads
    except (OSError, _NoCgroup):
        return None


def _open(state_dir: Path, proc: Path) -> Containment:
    layout = _layout(state_dir, proc)
    layout.base.mkdir(exist_ok=True)
    if layout.delegated and layout.own != layout.base / "agent":
        # A cgroup with controllers enabled for its children may hold no processes: the agent leaves its
        # own for a leaf beside its workloads (under systemd, the service's cgroup is delegated to it).
        (layout.base / "agent").mkdir(exist_ok=True)
        (layout.base / "agent" / "cgroup.procs").write_text("0")  # "0": the writing process, the agent
    layout.workloads.mkdir(exist_ok=True)
    for directory in (*layout.chain, layout.workloads):
        _enable_controllers(directory)
    enabled = frozenset((layout.workloads / "cgroup.subtree_control").read_text().split())
    return Containment(kind="cgroup", workloads=layout.workloads, controllers=enabled)


def release(workloads: Path) -> None:
    """Remove the agent's workloads directory if no attempt's cgroup is left in it (on a clean exit)."""
    with contextlib.suppress(OSError):  # EBUSY: workloads live on, as they do across agent restarts
        workloads.rmdir()


def _enable_controllers(directory: Path) -> None:
    """Enable for ``directory``'s children each limiting controller it has; one refused is not an error."""
    available = set((directory / "cgroup.controllers").read_text().split())
    for controller in sorted(available & set(LIMIT_CONTROLLERS.values())):
        try:
            (directory / "cgroup.subtree_control").write_text(f"+{controller}")
        except OSError as exc:  # EBUSY: processes in a cgroup that is not the root; that limit stays off
            log.info(
                "cannot enable a cgroup controller",
                cgroup=str(directory),
                controller=controller,
                error=str(exc),
            )


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The unified hierarchy's path of this process (the ``0::`` line), or None on a v1-only host."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].removesuffix(" (deleted)") or "/"
    return None


def unified_mount(mountinfo: str) -> tuple[str, Path] | None:
    """(root within the hierarchy, mount point) of the first cgroup2 mount, or None."""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        if rest.split(" ", 1)[0] != "cgroup2":
            continue
        parts = fields.split()
        return _unescape(parts[3]), Path(_unescape(parts[4]))
    return None


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return text.encode().decode("unicode_escape") if "\\" in text else text


# --- One attempt's cgroup -------------------------------------------------------------------------------


def create(cgroup: Path, controllers: frozenset[str], limits: dict[str, float | int]) -> None:
    """Make ``cgroup`` (empty; a leftover of a crash before its spawn is reused) and apply ``limits``."""
    cgroup.mkdir(exist_ok=True)
    for name, value in limits.items():
        if LIMIT_CONTROLLERS[name] not in controllers:
            raise CgroupError(f"{cgroup}: {name} cannot be enforced here")
        file, text = _limit_file(name, value)
        (cgroup / file).write_text(text)
        if name == "memory_max_bytes" and (cgroup / "memory.swap.max").exists():
            (cgroup / "memory.swap.max").write_text("0")  # else the limit only moves memory to swap


def _limit_file(name: str, value: float) -> tuple[str, str]:
    """The interface file and the value that enforce limit ``name`` of spec.resources."""
    if name == "cpu_max":  # cores as a quota per period; the kernel's minimum quota is 1 ms
        return "cpu.max", f"{max(1000, round(value * CPU_PERIOD_US))} {CPU_PERIOD_US}"
    return ("memory.max" if name == "memory_max_bytes" else "pids.max"), str(int(value))


def procs(cgroup: Path) -> list[int]:
    """The processes in ``cgroup`` now; none if it does not exist."""
    try:
        return [int(p) for p in _read(cgroup / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def populated(cgroup: Path) -> bool:
    """Whether any process is in ``cgroup`` (or below it), from ``cgroup.events``."""
    try:
        text = (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in text.splitlines()


def signal_all(cgroup: Path, signum: int) -> set[int]:
    """Send ``signum`` to every process in ``cgroup``; the pids that got it.

    Through a pidfd checked against the cgroup: a pid read from cgroup.procs may be reused by the time it
    is signalled, and a pidfd names one process, so a stranger is never signalled.
    """
    delivered = set()
    for pid in procs(cgroup):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone meanwhile
        except OSError:
            # Out of descriptors (EMFILE): by pid after all, checked just before; the reuse of a pid in
            # that instant is far less likely than the harm of a stop that reaches nobody.
            if member(pid, cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
                    delivered.add(pid)
            continue
        try:
            if not member(pid, cgroup):
                continue  # the pid was reused between the read and the pidfd
            signals.pidfd_send_signal(fd, signum)
            delivered.add(pid)
        except OSError:
            continue
        finally:
            os.close(fd)
    return delivered


def member(pid: int, cgroup: Path) -> bool:
    """Whether process ``pid`` is in ``cgroup`` now."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    own = own_cgroup(text)
    return own is not None and _mounted(own) == cgroup


@functools.cache
def _mount() -> tuple[str, Path] | None:
    """Read once: where the hierarchy is mounted does not change while the agent runs."""
    return unified_mount(Path("/proc/self/mountinfo").read_text())


def _mounted(path: str) -> Path | None:
    mount = _mount()
    if mount is None:
        return None
    root, point = mount
    return point / path[len(root) :].lstrip("/")


def kill(cgroup: Path) -> None:
    """SIGKILL everything in ``cgroup`` at once (``cgroup.kill``, Linux 5.14), forks under way included."""
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        if cgroup.is_dir():  # an older kernel: one by one, until nothing is left (see wait_empty)
            signal_all(cgroup, signals.SIGKILL)


async def wait_empty(cgroup: Path, kill_each_round: bool = False) -> None:
    """Return once ``cgroup`` holds no process (``populated 0``)."""
    delay = EMPTY_POLL_MIN_S
    while populated(cgroup):
        if kill_each_round:
            kill(cgroup)
        await asyncio.sleep(delay)
        delay = min(delay * 2, EMPTY_POLL_MAX_S)


def remove(cgroup: Path) -> None:
    """Remove an empty ``cgroup``; gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        cgroup.rmdir()


def discard_now(cgroup: Path, timeout_s: float = 1.0) -> None:
    """Kill and remove ``cgroup``, blocking until it is empty (a worker thread's job); OSError if it stays."""
    deadline = time.monotonic() + timeout_s
    kill(cgroup)
    while populated(cgroup) and time.monotonic() < deadline:
        time.sleep(EMPTY_POLL_MIN_S)
    remove(cgroup)


def _read(path: Path) -> str:
    """A small cgroup file whole. Not Path.read_text: its text layer costs more than the read, and a usage
    sample (three of these) is taken on every spawn and many decisions."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def cpu_seconds(cgroup: Path) -> float:
    """CPU time used by every process that ran in ``cgroup``, from cpu.stat (present without the cpu controller)."""
    for line in _read(cgroup / "cpu.stat").splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def memory_bytes(cgroup: Path) -> int | None:
    """Memory in use (memory.current), or None without the memory controller."""
    try:
        return int(_read(cgroup / "memory.current"))
    except FileNotFoundError:
        return None


def oom_kills(cgroup: Path) -> int:
    """How many processes the OOM killer killed in ``cgroup`` for its memory.max (0 without the controller)."""
    try:
        text = (cgroup / "memory.events").read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0

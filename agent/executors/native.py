"""The native supervisor (supervisor.c beside this module): built once, where a C compiler is found.

The executor starts it beside each workload: it runs the workload, copies its output into segments and
records its exit (docs/design.md, "Workloads"). Without it (no compiler on a fresh node, a failed build, a
cache on a noexec mount) the executor runs the shell supervisor (supervisor.sh) and its shell writers
instead: the same files, so format 2 either way, and the readers (agent/streams.py) cannot tell them
apart; the shell costs about five times the CPU per spawn and more memory.

The binary is cached under a name made of the hash of the source and the build flags, so a new version
of the source is built once, at the first start that finds it, and a copy of another version is never
run. It is built into a temporary name and renamed into place, so a crash mid-build leaves no half binary
under the real name; binaries of other versions are removed (a supervisor of an older agent runs one it
has exec'd already, which its removal does not disturb; so are the log writers of the agents before it,
``logwriter-*``). Blocking: call it off the event loop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import structlog

log = structlog.get_logger("agent.executors.native")

SOURCE = "supervisor.c"
PREFIX = "supervisor-"
OLD_PREFIXES = ("logwriter-",)  # the native log writer the shell supervisor ran, before this one
# Static first: no dynamic loader to run at each start, so the least memory per workload (its pages are
# the binary's own, shared by every supervisor), and no LD_PRELOAD from a workload's environment. A libc
# without a static archive (libc6-dev ships one on Debian) gets the dynamic build.
FLAG_SETS = (("-Os", "-static"), ("-Os",))
BUILD_TIMEOUT_S = 120.0  # a compiler on a machine loaded with hundreds of spawns is slow, not stuck
CHECK_TIMEOUT_S = 10.0
USAGE_EXIT = 2  # what the supervisor exits with when given no arguments: it runs
CACHE_ENV = "CACHE_DIRECTORY"  # systemd's CacheDirectory= sets it


def cache_dir(state_dir: Path) -> Path:
    """Where the native supervisor is cached: systemd's cache directory of the unit if it has one (its first), else
    ``state_dir/cache``."""
    given = os.environ.get(CACHE_ENV, "").split(":")[0]
    return Path(given) if given else state_dir / "cache"


def source_text() -> bytes:
    return resources.files("agent.executors").joinpath(SOURCE).read_bytes()


def cached_name() -> str:
    """The binary's name for this source and these flags."""
    digest = hashlib.sha256(source_text() + repr(FLAG_SETS).encode()).hexdigest()
    return f"{PREFIX}{digest[:16]}"


def build(cache: Path) -> Path | None:
    """The path of a native supervisor that runs here, built into ``cache`` if it is not there yet; None
    (and one log line saying why) if there is none: the executor then runs the shell supervisor."""
    target = cache / cached_name()
    try:
        cache.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not target.exists():
            problem = _compile(cache, target)
            if problem is not None:
                log.warning("no native supervisor, using the shell supervisor", reason=problem)
                return None
        problem = _check(target)
    except OSError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        log.warning("no native supervisor, using the shell supervisor", reason=problem)
        return None
    _remove_others(cache, target.name)
    log.info("native supervisor", path=str(target))
    return target


def _compile(cache: Path, target: Path) -> str | None:
    """Build ``target``; None, or why it could not be built."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} is not on PATH; Debian: apt-get install gcc libc6-dev)"
    partial = cache / f".{target.name}-{os.getpid()}.tmp"
    # The compiler's own temporary files go beside the output: /tmp may be read-only for the agent
    # (systemd's ProtectSystem=strict leaves it only its state directory).
    env = {**os.environ, "TMPDIR": str(cache)}
    errors = ""
    try:
        with resources.as_file(resources.files("agent.executors").joinpath(SOURCE)) as source:
            for flags in FLAG_SETS:
                try:
                    done = subprocess.run(
                        [compiler, *flags, "-o", str(partial), str(source)],
                        capture_output=True,
                        env=env,
                        timeout=BUILD_TIMEOUT_S,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    return f"{compiler} took more than {BUILD_TIMEOUT_S:.0f} s"
                if done.returncode == 0:
                    os.replace(partial, target)
                    return None
                errors = done.stderr.decode(errors="replace").strip()
    finally:
        partial.unlink(missing_ok=True)
    last = errors.splitlines()[-1] if errors else "no message"
    return f"{compiler} failed: {last[:300]}"


def _check(program: Path) -> str | None:
    """None if ``program`` runs here (a noexec mount, say, would fail every spawn); else why not."""
    try:
        done = subprocess.run([str(program)], capture_output=True, timeout=CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{program} does not run: {exc}"
    if done.returncode != USAGE_EXIT:
        return f"{program} does not run: exit status {done.returncode}"
    return None


def _remove_others(cache: Path, keep: str) -> None:
    for prefix in (PREFIX, *OLD_PREFIXES):
        for other in cache.glob(f"{prefix}*"):
            if other.name != keep:
                other.unlink(missing_ok=True)

"""The harness's own guards: programs a test needs (tests/support/programs.py) and processes a test left
running (tests/support/leftovers.py), tried on real processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support import leftovers, programs
from tests.support.agent import pid_alive
from tests.support.wait import wait_until_sync

GHOST = programs.Program("no-such-program-anywhere", "ghost-package", "to try the registry")


@pytest.fixture
def ghost(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(programs.PROGRAMS, "ghost", GHOST)
    return "ghost"


def test_a_missing_program_skips_naming_it_and_its_package(
    ghost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        programs.require(ghost)
    reason = str(skipped.value)
    assert reason.startswith(programs.SKIP_PREFIX)  # what the terminal summary collects
    assert "no-such-program-anywhere" in reason
    assert "apt-get install ghost-package" in reason


def test_under_ci_a_missing_program_fails_instead(ghost: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing program is a failure"):
        programs.require(ghost)
    with pytest.raises(pytest.fail.Exception):
        programs.check([ghost, "sh"])


def test_present_programs_are_found_and_every_package_is_named() -> None:
    assert programs.require("sh")
    assert all(p.package for p in programs.PROGRAMS.values())
    with pytest.raises(KeyError, match=r"not in tests/support/programs\.py"):
        programs.needs("no-such-entry")


def orphan(command: str, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start ``command`` as an orphan (re-parented to init, like a workload whose agent was killed)."""
    out = subprocess.run(
        ["sh", "-c", f"{command} >/dev/null 2>&1 & echo $!"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(out.stdout)


def test_workloads_under_a_run_directory_are_found_and_killed_with_their_children(tmp_path: Path) -> None:
    run_dir = tmp_path / "state" / "executions" / "w1"
    run_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pids = [orphan("sh -c 'sleep 300 & wait'", run_dir), orphan("sleep 300", elsewhere)]
    try:
        wait_until_sync(lambda: psutil.Process(pids[0]).children(), 10, what="the workload's child started")
        child = psutil.Process(pids[0]).children()[0].pid
        found = {leftover.pid for leftover in leftovers.workloads_under(tmp_path)}
        assert found == {pids[0], child}  # not the one outside every run directory
        leftovers.kill(leftovers.workloads_under(tmp_path))
        wait_until_sync(lambda: not pid_alive(pids[0]) and not pid_alive(child), 10, what="both gone")
        assert pid_alive(pids[1])
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_the_session_guard_knows_its_own_by_token_and_by_base_directory(tmp_path: Path) -> None:
    token = leftovers.new_token()
    base = tmp_path / "base"
    base.mkdir()
    env = {**os.environ, leftovers.ENV_TOKEN: token}
    other = {k: v for k, v in os.environ.items() if k != leftovers.ENV_TOKEN}
    by_token = orphan("sleep 300", tmp_path, env)
    by_path = orphan("sleep 300", base, other)
    stranger = orphan("sleep 300", tmp_path, other)
    try:
        found = {leftover.pid: leftover.why for leftover in leftovers.find(token, base)}
        assert found.get(by_token) == f"carries {leftovers.ENV_TOKEN}"
        assert found.get(by_path) == f"holds {base.resolve()}"
        assert stranger not in found
        assert os.getpid() not in found
    finally:
        for pid in (by_token, by_path, stranger):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

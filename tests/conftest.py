"""Shared fixtures: a real MQTT broker per test and a probe client on it; session-wide checks.

Which broker: mosquitto when installed, else the embedded amqtt broker in a subprocess;
``RECONCILE_TEST_BROKER=amqtt|mosquitto`` forces one. The choice is printed in the session header.

The session also checks that every program the tests run is there (tests/support/programs.py: a test
that needs a missing one skips, and the summary lists each such skip; under CI=true it fails), and that no
process a test started outlives the session (tests/support/leftovers.py: they are killed, and the run
fails naming them).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was started (.venv/bin/pytest does not put the
# working directory on sys.path, and tests/ has no __init__.py).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from agent.executors import native  # noqa: E402
from tests.support import leftovers, programs  # noqa: E402
from tests.support.broker import Broker, describe_kind  # noqa: E402
from tests.support.mqtt import Probe  # noqa: E402

_BASE_TEMP = pytest.StashKey[Path]()
_MISSING_SKIPS: list[tuple[str, str]] = []  # (test id, reason); the hook that fills it gets no config
_LEFTOVERS = pytest.StashKey[list[leftovers.Leftover]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{programs.MARK}(*names): the test runs these programs (tests/support/programs.py)"
    )
    # Inherited by everything the tests start with the default environment: see tests/support/leftovers.py.
    os.environ[leftovers.ENV_TOKEN] = leftovers.new_token()


def pytest_report_header(config: pytest.Config) -> list[str]:
    absent = programs.missing()
    if not absent:
        found = f"programs: all {len(programs.PROGRAMS)} the tests run are installed"
    else:
        then = "fail (CI=true)" if programs.in_ci() else "skip"
        names = ", ".join(f"{p.name} (apt-get install {' '.join(p.packages)})" for p in absent)
        found = f"programs missing: {names}; tests that need them {then}"
    return [f"broker: {describe_kind()}", found]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture: a test marked ``needs_programs`` skips (CI: fails) if one of them is missing."""
    for mark in item.iter_markers(programs.MARK):
        programs.check(mark.args)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(programs.SKIP_PREFIX):
            _MISSING_SKIPS.append((report.nodeid, reason))


@pytest.fixture(scope="session", autouse=True)
def _base_temp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where every test's tmp_path lives: a process with a file or argument there is the session's."""
    request.config.stash[_BASE_TEMP] = tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session", autouse=True)
def _native_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache of the native supervisor for the session (agent/executors/native.py): every agent a
    test starts, in this process or another, finds it built instead of compiling it for its own state."""
    cache = tmp_path_factory.mktemp("native-cache")
    before = os.environ.get(native.CACHE_ENV)
    os.environ[native.CACHE_ENV] = str(cache)
    try:
        yield cache
    finally:
        if before is None:
            del os.environ[native.CACHE_ENV]
        else:
            os.environ[native.CACHE_ENV] = before


@pytest.fixture(scope="session")
def native_supervisor(_native_cache: Path) -> Path:
    """The native supervisor, built (a test that uses it needs a C compiler: tests/support/programs.py)."""
    programs.require("cc")
    built = native.build(_native_cache)
    assert built is not None, "cc is installed but the native supervisor was not built (see the log)"
    return built


@pytest.hookimpl(trylast=True)  # after the runner's own teardown of what -x or Ctrl-C left set up
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config.stash.get(_BASE_TEMP, None)
    if base is None:  # no test ran
        return
    found = leftovers.find(os.environ[leftovers.ENV_TOKEN], base)
    session.config.stash[_LEFTOVERS] = found
    if found:
        leftovers.kill(found)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _MISSING_SKIPS:
        terminalreporter.section("tests skipped for a missing program", sep="=", yellow=True)
        by_reason: dict[str, list[str]] = defaultdict(list)
        for nodeid, reason in _MISSING_SKIPS:
            by_reason[reason].append(nodeid)
        for reason, nodeids in by_reason.items():
            terminalreporter.line(f"{len(nodeids)} skipped, {reason}:")
            for nodeid in nodeids:
                terminalreporter.line(f"  {nodeid}")
        terminalreporter.line("./scripts/test.sh installs them when it runs as root with apt-get.")
    found = config.stash.get(_LEFTOVERS, [])
    if found:
        terminalreporter.section("processes left running by the tests", sep="=", red=True)
        terminalreporter.line(
            f"{len(found)} processes started by the tests were still running after the last test; "
            "they are killed now and the run fails. A test that starts workloads must stop them at teardown.",
            red=True,
        )
        for leftover in found:
            terminalreporter.line(f"  {leftover}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started broker on a free 127.0.0.1 port, data in the test's tmp dir; stopped at teardown."""
    instance = Broker(tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
async def probe(broker: Broker) -> AsyncIterator[Probe]:
    """A connected Probe on the ``broker`` fixture (subscribe to what the test needs)."""
    async with Probe(broker.host, broker.port) as client:
        yield client

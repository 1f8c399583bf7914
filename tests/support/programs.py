"""Every program outside Python that the tests run, the Debian package that brings it, and why.

One registry for three readers:
- scripts/test.sh installs the packages of every missing program up front, when it can (root with apt):
  ``python -m tests.support.programs missing-packages`` prints them;
- the session header says which are missing (tests/conftest.py);
- a test that needs one asks for it with ``require(name)`` or the ``needs(*names)`` mark. A missing
  program skips the test with a reason naming program and package (the terminal summary lists every
  such skip); under ``CI=true`` it fails the test instead, since CI must never skip silently.

The supervisor's own tools (sh, setsid, env, sync) are here too: the agent runs them for every workload,
so a test of a workload needs them as much as a TLS test needs openssl.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import pytest

SKIP_PREFIX = "missing program"  # how the terminal summary recognises these skips among the others
MARK = "needs_programs"


@dataclass(frozen=True)
class Program:
    name: str
    package: str  # the Debian package that ships it
    why: str
    sbin: bool = False  # daemons live in sbin, which is not on a normal user's PATH
    also: tuple[str, ...] = ()  # more packages it needs to work (a compiler, its C library's headers)

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package, *self.also)

    def path(self) -> str | None:
        found = shutil.which(self.name)
        if found or not self.sbin:
            return found
        for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin", "/opt/homebrew/sbin"):
            candidate = os.path.join(directory, self.name)
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    def reason(self) -> str:
        wanted = " ".join(self.packages)
        return f"{SKIP_PREFIX}: {self.name} (Debian package {self.package}: apt-get install {wanted}), {self.why}"


PROGRAMS: dict[str, Program] = {
    p.name: p
    for p in (
        Program(
            "mosquitto",
            "mosquitto",
            "the tests' broker (the embedded amqtt one stands in) and the TLS and ACL tests",
            sbin=True,
        ),
        Program("mosquitto_passwd", "mosquitto", "makes the password file of the TLS and ACL tests"),
        Program("openssl", "openssl", "makes the test certificates (config/mosquitto/make-certs.sh)"),
        Program(
            "systemd-analyze", "systemd", "verifies the shipped unit (tests/integration/test_systemd.py)"
        ),
        Program("mount", "mount", "mounts a small tmpfs for the full-disk test (needs root)"),
        Program(
            "sh", "dash", "runs the shell supervisor beside every workload (agent/executors/supervisor.sh)"
        ),
        Program("setsid", "util-linux", "gives every workload its own session (the shell supervisor)"),
        Program("env", "coreutils", "restores default signals for every workload (the shell supervisor)"),
        Program("sync", "coreutils", "makes every exit file durable (the shell supervisor)"),
        Program(
            "head", "coreutils", "copies each workload stream into its log segments (the shell supervisor)"
        ),
        Program(
            "stdbuf",
            "coreutils",
            "makes that copy unbuffered, so output is on disk at once (the shell supervisor)",
        ),
        Program("wc", "coreutils", "measures each finished log segment (the shell supervisor)"),
        Program(
            "sleep",
            "coreutils",
            "bounds the shell supervisor's wait for its log writers at the workload's end",
        ),
        Program(
            "cc",
            "gcc",
            "builds the native supervisor (agent/executors/supervisor.c; without it supervisor.sh runs)",
            also=("libc6-dev",),
        ),
        Program(
            "faketime",
            "faketime",
            "brings libfaketime, which moves the agent's wall clock in tests/integration/test_clock_jumps.py",
        ),
        Program("git", "git", "installs the previous agent from a git ref (the upgrade and fixture tests)"),
    )
}


def missing(names: Iterable[str] | None = None) -> list[Program]:
    """The registered programs (all, or these) that are not installed."""
    chosen = PROGRAMS.values() if names is None else (PROGRAMS[name] for name in names)
    return [p for p in chosen if p.path() is None]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(name: str) -> str:
    """The program's path; if it is missing, skip the calling test (fail it under CI=true)."""
    program = PROGRAMS[name]
    path = program.path()
    if path is None:
        _give_up([program])
    return path


def check(names: Iterable[str]) -> None:
    """For the ``needs_programs`` mark: skip (or, under CI, fail) naming every program that is missing."""
    absent = missing(names)
    if absent:
        _give_up(absent)


def _give_up(absent: list[Program]) -> NoReturn:
    reason = "; ".join(p.reason() for p in absent)
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing program is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark: the test runs these programs. ``@needs("mosquitto", "openssl")``."""
    for name in names:
        if name not in PROGRAMS:
            raise KeyError(f"{name!r} is not in tests/support/programs.py's registry: add it there")
    return getattr(pytest.mark, MARK)(*names)


def main(argv: list[str]) -> int:
    if argv == ["missing-packages"]:
        print(" ".join(sorted({package for p in missing() for package in p.packages})))
        return 0
    if argv == ["list"]:
        for p in PROGRAMS.values():
            print(f"{p.name:18} {p.package:12} {p.path() or 'MISSING':28} {p.why}")
        return 0
    print("usage: python -m tests.support.programs missing-packages|list", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fuzzed configuration and ``apply`` files through the real command line (tests/support/fuzz_files.py).

The unit fuzzers check the loaders; this checks what an operator sees: a process that exits 2 with a
short message on standard error, never a traceback, for seeded files of every kind. A configuration that
is valid passes ``check-config`` (exit 0); an ``apply`` of valid documents gets as far as the broker,
which is not there (exit 1, one line).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.integration.test_cli_config import run_cli
from tests.support import fuzz_files
from tests.support.broker import free_port

SEEDS = range(8)


def assert_clean(stderr: str, *, max_lines: int) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) <= max_lines, stderr[:3000]


@pytest.mark.parametrize("seed", SEEDS)
def test_check_config_answers_any_file_with_ok_or_exit_2_and_a_message(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(fuzz_files.config_file(random.Random(seed)))

    result = run_cli("check-config", "--config", str(path))

    assert result.returncode in (0, 2), result.stderr
    assert_clean(result.stderr, max_lines=40)
    if result.returncode == 2:
        assert result.stderr.startswith(str(path)), result.stderr


@pytest.mark.parametrize("seed", SEEDS)
def test_apply_answers_any_file_with_exit_2_and_one_line_unless_it_is_valid(
    tmp_path: Path, seed: int
) -> None:
    suffix, data = fuzz_files.apply_file(random.Random(seed))
    path = tmp_path / f"documents{suffix}"
    path.write_bytes(data)

    result = run_cli("apply", str(path), "--port", str(free_port()), "--timeout", "5")

    assert result.returncode in (1, 2), result.stderr
    assert_clean(result.stderr, max_lines=1)
    assert result.stderr.startswith("reconcile-agent: "), result.stderr
    if result.returncode == 2:
        assert str(path) in result.stderr

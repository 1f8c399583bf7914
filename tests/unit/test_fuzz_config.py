"""Configuration files nobody wrote (tests/support/fuzz_files.py) through ``load_config``.

Whatever the file holds, the agent either gets a configuration or a :class:`ConfigError` whose message
names the file and says what is wrong in a few short lines: never another exception (a traceback at the
command line), never a hang, never a configuration holding a path the OS would refuse. Environment
overrides are fuzzed too, as they are the other way a configuration arrives.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, ConfigError, load_config
from agent.exec_limits import path_problem
from tests.support import fuzz_files

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_MESSAGE_LINES = 40  # one line a problem: a mutated file has a few
MAX_LINE = 600


@contextmanager
def config_at(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as tmp:
        path = Path(tmp) / "agent.yaml"
        path.write_bytes(data)
        yield path


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: value for name, value in os.environ.items() if name.startswith("RECONCILE_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)
        os.environ.update(saved)


def check(path: Path) -> None:
    try:
        config: AgentConfig | ConfigError = load_config(path)
    except ConfigError as exc:
        config = exc
    if isinstance(config, ConfigError):
        lines = config.message.splitlines()
        assert lines, "an empty message"
        assert lines[0].startswith(str(path)), config.message
        assert "Traceback" not in config.message
        assert len(lines) <= MAX_MESSAGE_LINES, config.message[:2000]
        assert all(len(line) <= MAX_LINE for line in lines), max(lines, key=len)[:2000]
        return
    for where in (config.state_dir, config.results_path):
        assert path_problem(str(where)) is None, where


@FUZZ
@given(fuzz_files.config_files())
def test_any_configuration_file_gets_a_configuration_or_a_short_message(data: bytes) -> None:
    with config_at(data) as path:
        check(path)


ENV_NAMES = (
    "RECONCILE_NODE_ID",
    "RECONCILE_STATE_DIR",
    "RECONCILE_MQTT__PORT",
    "RECONCILE_MQTT__HOST",
    "RECONCILE_MQTT__TLS",
    "RECONCILE_LIMITS__MAX_EXECUTIONS",
    "RECONCILE_LABELS",
    "RECONCILE_WORKLOAD_LOGS__KEEP",
    "RECONCILE_LOG__LEVEL",
    "RECONCILE_BOGUS",
)
# os.environ holds no NUL byte and no lone surrogate: those cannot reach the agent this way.
env_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)


@FUZZ
@given(
    fuzz_files.config_files(),
    st.dictionaries(
        st.sampled_from(ENV_NAMES), env_values | st.sampled_from(['{"a": 1}', "[]", "99999999"]), max_size=3
    ),
)
def test_environment_overrides_get_a_configuration_or_a_short_message(
    data: bytes, env: dict[str, str]
) -> None:
    with config_at(data) as path, environment(env):
        check(path)


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_aliases_and_nesting_are_refused_with_a_message_before_anything_walks_them(
    rng: random.Random,
) -> None:
    text = fuzz_files.laughs(rng) if rng.random() < 0.5 else fuzz_files.deep_yaml(rng)
    with config_at(text.encode()) as path:
        check(path)


def test_a_path_that_never_ends_is_refused_at_its_size_cap() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        load_config(Path("/dev/zero"))

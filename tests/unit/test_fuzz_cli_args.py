"""Command lines nobody typed, through the real argument parser (``agent.cli.build_parser``).

Every word an operator can pass is checked by argparse before anything connects, spawns or reads: a
command line either parses into values that are all valid (ids, hosts, prefixes, ports, seconds, byte
counts within their ranges) or ends in a usage error (exit 2), never in another exception.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import build_parser
from agent.names import host_problem, id_problem, topic_prefix_problem
from agent.protocol import MAX_TAIL_BYTES

COMMANDS = (
    "apply",
    "get",
    "job",
    "watch",
    "delete",
    "results",
    "logs",
    "nodes",
    "cordon",
    "uncordon",
    "events",
)
FLAGS = (
    "--host", "--port", "--topic-prefix", "--timeout", "--tail", "--node", "-o", "--output", "--wait",
    "--stderr", "-f", "--follow", "--config", "--job", "--all", "-h", "--version", "--",
)  # fmt: skip
ODD_WORDS = (
    "", "-", "--", "x", "n1", "a/b", "+", "#", "nan", "inf", "-1", "0", "1e400", "99999999999999999999",
    "\x00", "a\x00b", "\U0001f4a9", "a" * 300, "a." * 200, "::1", "[::1]", "json", "table", "-5",
)  # fmt: skip
words = st.one_of(st.sampled_from(FLAGS), st.sampled_from(ODD_WORDS), st.text(max_size=20))


def parse(argv: list[str]) -> argparse.Namespace | int:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv)
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int)
    return code


def check_values(args: argparse.Namespace) -> None:
    values = vars(args)
    for key in ("host",):
        if values.get(key) is not None:
            assert host_problem(values[key]) is None, values[key]
    if values.get("topic_prefix") is not None:
        assert topic_prefix_problem(values["topic_prefix"]) is None
    if values.get("port") is not None:
        assert 1 <= values["port"] <= 65535
    if values.get("timeout") is not None:
        assert values["timeout"] > 0
        assert math.isfinite(values["timeout"])
    if values.get("tail") is not None:
        assert 0 <= values["tail"] <= MAX_TAIL_BYTES
    for key in ("node", "execution", "node_id"):
        if isinstance(values.get(key), str):
            assert id_problem(values[key]) is None, values[key]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMANDS), st.lists(words, max_size=8))
def test_any_command_line_parses_into_valid_values_or_is_a_usage_error(command: str, rest: list[str]) -> None:
    outcome = parse([command, *rest])
    if isinstance(outcome, int):
        assert outcome in (0, 2)  # --help and --version exit 0
        return
    check_values(outcome)

"""The operator subcommands' arguments. argparse only: ``reconcile-agent --help`` must not load MQTT code."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from agent.names import host_problem, id_problem, topic_prefix_problem
from agent.protocol import DEFAULT_TAIL_BYTES, MAX_TAIL_BYTES

DEFAULT_WAIT_S = 300.0


def _id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value!r} {problem}")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: must be a positive number of seconds")
    return seconds


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return count


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: a port is 1 to 65535")
    return port


def _checked(problem_of: Callable[[str], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return check


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker (default 127.0.0.1:1883, prefix reconcile/v1)")
    group.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="an agent configuration file: its mqtt section (host, port, prefix, credentials, TLS) is used",
    )
    group.add_argument("--host", type=_checked(host_problem), help="broker host (overrides the config file)")
    group.add_argument("--port", type=_port, help="broker port (overrides the config file)")
    group.add_argument(
        "--topic-prefix",
        type=_checked(topic_prefix_problem),
        metavar="PREFIX",
        help="topic prefix (overrides the config file)",
    )


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table for people, json for scripts",
    )


def add_apply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="YAML or JSON: a desired document with node_id, a list of them, or YAML documents split by "
        "'---' ('-' reads standard input); leave generation out, apply sets it",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="show progress until each execution is running and stable, completed, stopped or pending "
        "as asked (exit 1 if any failed or timed out)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_WAIT_S, metavar="SECONDS", help="for --wait (default 300)"
    )
    _output(parser)
    _connection(parser)


def add_get(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution", nargs="?", type=_id, metavar="EXECUTION", help="only this execution")
    parser.add_argument("--node", type=_id, help="only this node's executions")
    _output(parser)
    _connection(parser)


def add_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=_id, help="only this node")
    _output(parser)
    _connection(parser)


def add_cordon(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", type=_id, metavar="NODE", help="the node id")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for an online node to show it (default 30)",
    )
    parser.add_argument(
        "--generation",
        type=_count,
        metavar="N",
        help="publish this control generation instead of one above the retained document's",
    )
    _connection(parser)


def add_job(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", type=_id, metavar="JOB", help="the job id (an execution's job_id)")
    _output(parser)
    _connection(parser)


def add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=_id, help="only this node")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this long (exit 0); default: until Ctrl-C",
    )
    _output(parser)
    _connection(parser)


def add_delete(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution", type=_id, metavar="EXECUTION")
    parser.add_argument("--node", type=_id, required=True, help="the node the execution is on")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help="for the stop, then for the clear (default 300 each)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="clear at once without waiting for the stop (the agent still stops it)",
    )
    _connection(parser)


def add_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution", type=_id, metavar="EXECUTION")
    parser.add_argument("--node", type=_id, help="the node the execution is on (needed if on several)")
    parser.add_argument(
        "-o",
        "--output-dir",
        metavar="DIR",
        help="unpack an s3 result here (default ./EXECUTION); credentials: publishers.s3 of --config, "
        "or the AWS environment",
    )
    _connection(parser)


def _tail_bytes(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of bytes") from None
    if not 0 <= count <= MAX_TAIL_BYTES:
        raise argparse.ArgumentTypeError(f"{value!r}: the tail is 0 to {MAX_TAIL_BYTES} bytes (1 MiB)")
    return count


def add_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution", type=_id, metavar="EXECUTION")
    parser.add_argument(
        "--node", type=_id, help="the node the execution is on (default: found by its status)"
    )
    parser.add_argument("--stderr", action="store_true", help="the workload's stderr instead of its stdout")
    parser.add_argument(
        "--tail",
        type=_tail_bytes,
        default=DEFAULT_TAIL_BYTES,
        metavar="BYTES",
        help=f"how much of the end to print first (default {DEFAULT_TAIL_BYTES}, at most {MAX_TAIL_BYTES})",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print what the workload writes until it ends (an hour at most); Ctrl-C stops",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long the node may take to answer (default 10)",
    )
    _connection(parser)


def add_events(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=_id, help="only this node's events")
    parser.add_argument(
        "--type", action="append", metavar="TYPE", help="only events of this type (repeatable)"
    )
    parser.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this long; exit 1 if --count events had not arrived by then",
    )
    _output(parser)
    _connection(parser)

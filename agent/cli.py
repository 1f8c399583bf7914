"""The ``reconcile-agent`` command line.

Each subcommand is one small function registered in :data:`SUBCOMMANDS`; adding one (apply, get, watch)
means writing its function and a :class:`Subcommand` entry, nothing else.

Owns the command line only: what a command does lives in agent/daemon.py (``run``) and agent/operator/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import agent
from agent.config import AgentConfig, ConfigError, load_config
from agent.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from agent.log import configure_logging
from agent.operator import arguments as operator_args

PROG = "reconcile-agent"


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        required=True,
        metavar="FILE",
        help="YAML configuration file; RECONCILE_* environment variables override it "
        "(RECONCILE_NODE_ID, RECONCILE_MQTT__PORT, ...)",
    )


def _load(path: Path) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    configure_logging(config.log.format, config.log.level)
    # Imported here so that --help, --version and check-config stay fast and never touch MQTT code.
    from agent.daemon import run_agent  # noqa: PLC0415

    return asyncio.run(run_agent(config))


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    try:
        config.check_files()
        if config.mqtt.tls is not None:
            from agent.tls import tls_context  # noqa: PLC0415  (loads ssl only when TLS is configured)

            tls_context(config)
    except ConfigError as exc:
        print(f"{args.config}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    mqtt = config.mqtt
    broker = "embedded, started by the agent" if mqtt.embedded else "external"
    tls = "off" if mqtt.tls is None else ("required" if mqtt.tls.required else "on")
    print(f"{args.config}: ok")
    print(f"  node id:   {config.node_id}")
    print(f"  broker:    {mqtt.host}:{mqtt.port} ({broker}, TLS {tls})")
    print(f"  topics:    {mqtt.topic_prefix}/nodes/{config.node_id}/...")
    print(f"  state dir: {config.state_dir}")
    s3 = ", s3" if config.publishers.s3 is not None else ""
    print(f"  results:   local in {config.results_path}{s3}")
    return EXIT_OK


def _operator(args: argparse.Namespace) -> int:
    # Imported here for the same reason as the daemon: --help and check-config never load MQTT code.
    from agent.operator.main import run_command  # noqa: PLC0415

    return run_command(args)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        name="run",
        summary="run the agent in the foreground until SIGTERM or SIGINT",
        example="reconcile-agent run --config config/dev.yaml",
        add_arguments=_add_config_argument,
        handler=_run,
    ),
    Subcommand(
        name="check-config",
        summary="validate a configuration file and show what it resolves to",
        example="reconcile-agent check-config --config /etc/reconcile-agent/agent.yaml",
        add_arguments=_add_config_argument,
        handler=_check_config,
    ),
    # The operator's commands (agent/operator/, docs/cli.md): an MQTT client of the wire contract.
    Subcommand(
        name="apply",
        summary="publish desired documents at their next generation (--wait: until each gets there)",
        example="reconcile-agent apply web.yaml --wait --config config/dev.yaml",
        add_arguments=operator_args.add_apply,
        handler=_operator,
    ),
    Subcommand(
        name="get",
        summary="list executions: node, id, job, observed state, revision, age, stable, restarts",
        example="reconcile-agent get --node node-1 -o json",
        add_arguments=operator_args.add_get,
        handler=_operator,
    ),
    Subcommand(
        name="job",
        summary="one job's executions across every node, and the job's state",
        example="reconcile-agent job web",
        add_arguments=operator_args.add_job,
        handler=_operator,
    ),
    Subcommand(
        name="nodes",
        summary="list nodes: state, agent version, labels, executions by state, capacity, cordoned",
        example="reconcile-agent nodes -o json",
        add_arguments=operator_args.add_nodes,
        handler=_operator,
    ),
    Subcommand(
        name="watch",
        summary="follow status changes across nodes until Ctrl-C",
        example="reconcile-agent watch --node node-1",
        add_arguments=operator_args.add_watch,
        handler=_operator,
    ),
    Subcommand(
        name="events",
        summary="follow the agents' events (rejections, restarts, lost workloads) until Ctrl-C",
        example="reconcile-agent events --type desired_rejected --count 1 --timeout 30",
        add_arguments=operator_args.add_events,
        handler=_operator,
    ),
    Subcommand(
        name="results",
        summary="download and unpack an execution's s3 results (for local ones: the node and path)",
        example="reconcile-agent results batch-7 -o ./batch-7 --config /etc/reconcile-agent/agent.yaml",
        add_arguments=operator_args.add_results,
        handler=_operator,
    ),
    Subcommand(
        name="logs",
        summary="print an execution's stdout (or --stderr) from its node, and follow it with -f",
        example="reconcile-agent logs --node node-1 web-2 --tail 4096 -f",
        add_arguments=operator_args.add_logs,
        handler=_operator,
    ),
    Subcommand(
        name="delete",
        summary="stop an execution, wait until it is stopped, then delete it",
        example="reconcile-agent delete --node node-1 web-2",
        add_arguments=operator_args.add_delete,
        handler=_operator,
    ),
    Subcommand(
        name="cordon",
        summary="stop a node taking new executions (what it runs keeps running); retained, survives restarts",
        example="reconcile-agent cordon node-1",
        add_arguments=operator_args.add_cordon,
        handler=_operator,
    ),
    Subcommand(
        name="uncordon",
        summary="let a cordoned node take new executions again",
        example="reconcile-agent uncordon node-1",
        add_arguments=operator_args.add_cordon,
        handler=_operator,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {cmd.example}\n      {cmd.summary}" for cmd in SUBCOMMANDS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Per-node reconciliation agent: takes desired state for this node's executions over "
        "MQTT, runs them, and publishes durable status revisions.",
        epilog=f"examples:\n{examples}\n\nexit status: 0 ok, 1 failed (broker unreachable, not found, "
        "did not reach the desired state), 2 bad arguments, configuration or file, 130 interrupted.\nRun 'reconcile-agent COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {agent.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in SUBCOMMANDS:
        sub = commands.add_parser(
            cmd.name,
            help=cmd.summary,
            description=cmd.summary[:1].upper() + cmd.summary[1:] + ".",
            epilog=f"example:\n  {cmd.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(sub)
        sub.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reconcile-agent`` script and ``python -m agent``; returns the exit status."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at the interpreter's exit, so a closed pipe is caught below
    except BrokenPipeError:
        # The reader went away (`reconcile-agent get | head -1`): as for any Unix filter, that is no
        # error to report. Output still buffered would raise again at exit, so it goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help, --version and usage errors exit from inside argparse; return the status instead, so
        # main() can be called in-process.
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        # The daemon handles SIGINT itself; this covers a Ctrl-C before its handlers are installed.
        return EXIT_INTERRUPTED

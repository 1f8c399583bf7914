"""Running one operator subcommand: its event loop, Ctrl-C, and errors as one line and an exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from agent.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from agent.operator.apply import apply
from agent.operator.connection import Target, resolve_target
from agent.operator.cordon import cordon, uncordon
from agent.operator.delete import delete
from agent.operator.errors import OperatorError
from agent.operator.get import get, job
from agent.operator.live import events, watch
from agent.operator.logs import logs
from agent.operator.nodes import nodes
from agent.operator.results import results

Command = Callable[[argparse.Namespace, Target], Coroutine[Any, Any, int]]

COMMANDS: dict[str, Command] = {
    "apply": apply,
    "get": get,
    "job": job,
    "nodes": nodes,
    "watch": watch,
    "events": events,
    "delete": delete,
    "cordon": cordon,
    "uncordon": uncordon,
    "results": results,
    "logs": logs,
}
# Following a stream has no result to lose: Ctrl-C is how it normally ends.
ENDED_BY_CTRL_C = frozenset({"watch", "events", "logs"})


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.command``; never raises for an operator's mistake or an unreachable broker."""
    try:
        target = resolve_target(args)
        return asyncio.run(_interruptible(COMMANDS[args.command], args, target))
    except OperatorError as exc:
        print(f"reconcile-agent: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BrokenPipeError:
        # `get | head`: the reader has gone. Point stdout at /dev/null so the exit flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


async def _interruptible(command: Command, args: argparse.Namespace, target: Target) -> int:
    """SIGINT and SIGTERM cancel the command (disconnecting cleanly) instead of raising mid-await."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(command(args, target))
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    try:
        return await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return EXIT_OK if args.command in ENDED_BY_CTRL_C else EXIT_INTERRUPTED
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

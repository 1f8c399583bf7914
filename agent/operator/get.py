"""``get`` (a table of executions) and ``job`` (one job across every node): read-only snapshots."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.jobs import job_state
from agent.operator.render import age, execution_table, note, out, out_json, results_text, time_text
from agent.operator.snapshot import execution_statuses
from agent.operator.status import ExecutionView
from agent.protocol import ANY, PUBLISHING_MESSAGE


async def statuses(target: Target, node_id: str = ANY, execution_id: str = ANY) -> list[ExecutionView]:
    """Every retained status that matches, sorted; on stderr, what could not be made sure of."""
    snapshot = await execution_statuses(target, node_id, execution_id)
    for warning in snapshot.warnings:
        note(warning)
    return snapshot.ordered()


async def get(args: argparse.Namespace, target: Target) -> int:
    node_id: str = args.node or ANY
    execution_id: str = args.execution or ANY
    views = await statuses(target, node_id, execution_id)
    if args.execution and not views:
        where = f"on node {args.node}" if args.node else "on any node"
        raise OperatorError(f"no execution {args.execution!r} {where}")
    if args.output == "json":
        out_json([v.document for v in views])
    elif views:
        out(execution_table(views, datetime.now(UTC)))
        if args.execution:  # where its results are, for an execution that publishes any
            for view in views:
                if view.results is not None or view.message == PUBLISHING_MESSAGE:
                    out(f"Results of {view.name}: {results_text(view)}")
    else:
        note("No executions" + (f" on node {args.node}." if args.node else "."))
    return EXIT_OK


async def job(args: argparse.Namespace, target: Target) -> int:
    views = await statuses(target)
    state = job_state(args.job, views)
    if not state.executions:
        raise OperatorError(f"no executions of job {args.job!r} on any node")
    if args.output == "json":
        out_json(
            {
                "job_id": state.job_id,
                "state": state.state,
                "version": state.version,
                "create_time": time_text(state.create_time),
                "update_time": time_text(state.update_time),
                "timeout_at": time_text(state.timeout_at),
                "executions": [v.document for v in state.executions],
            }
        )
        return EXIT_OK
    now = datetime.now(UTC)
    nodes = sorted({v.node_id for v in state.executions})
    out(f"Job:      {state.job_id}")
    out(f"State:    {state.state}")
    out(f"Version:  {state.version}")
    out(f"Nodes:    {len(nodes)} ({', '.join(nodes)})")
    out(f"Created:  {time_text(state.create_time) or '-'} ({age(state.create_time, now)} ago)")
    out(f"Updated:  {time_text(state.update_time) or '-'} ({age(state.update_time, now)} ago)")
    if state.timeout_at is not None:
        out(f"Timeout:  {time_text(state.timeout_at)} (in {age(now, state.timeout_at)})")
    out()
    out(execution_table(state.executions, now))
    return EXIT_OK

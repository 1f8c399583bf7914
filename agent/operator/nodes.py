"""``nodes``: the fleet's nodes from their retained node status documents, as a table or JSON.

The node status is tolerant reading too (a retained topic may hold anything): a payload that is not a
JSON object is skipped, a field of the wrong type shows as ``-``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.render import note, out, out_json, table
from agent.operator.session import Incoming, connect
from agent.protocol import OBSERVED_STATES, FleetTopics

NODE_COLUMNS = ("NODE", "STATE", "VERSION", "LABELS", "EXECUTIONS", "CAPACITY", "CORDONED")


def node_documents(topics: FleetTopics, messages: Iterable[Incoming]) -> dict[str, dict[str, Any]]:
    """The latest node status document of each node (an empty payload removes it)."""
    nodes: dict[str, dict[str, Any]] = {}
    for message in messages:
        where = topics.where(message.topic)
        if where is None or where.kind != "node_status":
            continue
        if not message.payload:
            nodes.pop(where.node_id, None)
            continue
        try:
            document = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(document, dict):
            nodes[where.node_id] = document
    return nodes


def _labels(value: object) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    return ",".join(f"{k}={v}" if v else str(k) for k, v in sorted(value.items()))


def _executions(value: object) -> str:
    """``running=3,failed=1`` in the order of the lifecycle."""
    if not isinstance(value, dict) or not value:
        return "-"
    order = {state: i for i, state in enumerate(OBSERVED_STATES)}
    keys = sorted(value, key=lambda k: (order.get(k, len(order)), k))
    return ",".join(f"{k}={value[k]}" for k in keys)


def size_text(count: object) -> str:
    """``7.5Gi``, ``512Mi``: binary units, as kubectl shows memory."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "?"
    size = float(count)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if size < 1024 or unit == "Ti":
            return f"{size:.0f}{unit}" if unit == "" or size >= 10 else f"{size:.1f}{unit}"
        size /= 1024
    return "?"  # unreachable: Ti ends the loop


def _capacity(value: object) -> str:
    """``2 cpu, 7.5Gi mem, 40Gi disk free``."""
    if not isinstance(value, dict):
        return "-"
    cpus = value.get("cpus")
    return (
        f"{cpus if isinstance(cpus, int) else '?'} cpu, {size_text(value.get('memory_bytes'))} mem, "
        f"{size_text(value.get('state_disk_free_bytes'))} disk free"
    )


def _cordoned(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-"


def node_rows(nodes: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for node_id in sorted(nodes):
        document = nodes[node_id]
        maximum = document.get("max_executions")
        executions = _executions(document.get("executions"))
        if isinstance(maximum, int) and not isinstance(maximum, bool):
            executions += f" (max {maximum})"
        rows.append(
            [
                node_id,
                str(document.get("state", "-")),
                str(document.get("agent_version", "-")),
                _labels(document.get("labels")),
                executions,
                _capacity(document.get("capacity")),
                _cordoned(document.get("cordoned")),
            ]
        )
    return rows


async def nodes(args: argparse.Namespace, target: Target) -> int:
    async with connect(target) as session:
        await session.subscribe(session.topics.node_status(args.node or "+"))
        found = node_documents(session.topics, await session.fence())
    if args.output == "json":
        out_json([found[node_id] for node_id in sorted(found)])
    elif found:
        out(table(NODE_COLUMNS, node_rows(found)))
    else:
        note("No nodes" + (f" named {args.node}." if args.node else "."))
    return EXIT_OK

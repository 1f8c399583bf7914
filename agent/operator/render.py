"""Plain-text output: aligned tables, short ages, one-line transitions; JSON for scripts.

No terminal library: the output must read the same in a pipe, a log file and a CI transcript.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.operator.status import ExecutionView
from agent.protocol import rfc3339

EXECUTION_COLUMNS = ("NODE", "EXECUTION", "JOB", "STATE", "REVISION", "AGE", "STABLE", "RESTARTS")


def format_age(seconds: float | None) -> str:
    """``5s``, ``3m``, ``2h``, ``4d``: the largest whole unit, as kubectl shows ages; ``-`` if unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))  # a clock a little ahead of ours is "just now", not negative
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def age(since: datetime | None, now: datetime) -> str:
    return format_age(None if since is None else (now - since).total_seconds())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned and separated by two spaces, no trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def execution_rows(views: Sequence[ExecutionView], now: datetime) -> list[list[str]]:
    return [
        [
            v.node_id,
            v.execution_id,
            v.job_id,
            v.state,
            str(v.revision),
            age(v.created_at, now),
            "yes" if v.stable else "no",
            str(v.restarts),
        ]
        for v in views
    ]


def execution_table(views: Sequence[ExecutionView], now: datetime) -> str:
    return table(EXECUTION_COLUMNS, execution_rows(views, now))


def results_text(view: ExecutionView) -> str:
    """Where an execution's results are: ``s3://...`` or ``node-1:/path`` (on the node), or that they are
    still being published."""
    results = view.results
    if results is None:
        return "being published"
    raw = results.get("metadata")
    metadata: dict[str, Any] = raw if isinstance(raw, dict) else {}
    facts = f"{metadata.get('size_bytes', '?')} bytes, {metadata.get('files', '?')} files, sha256 {metadata.get('sha256', '?')}"
    if results.get("storage_source") == "local":
        return f"{view.node_id}:{results.get('path')} (on the node; {facts})"
    return f"{results.get('url')} ({facts})"


def transition(name: str, before: str | None, view: ExecutionView) -> str:
    """``node-1/web-2  starting -> validating (rev 3)``; the message when there is one worth reading."""
    line = f"{name}  {before or '(new)'} -> {view.state} (rev {view.revision})"
    if view.state == before:
        line = f"{name}  {view.state} (rev {view.revision})"
    if view.message and view.state in ("failed", "lost", "degraded", "starting"):
        line += f": {view.message}"
    return line


def clock(at: datetime | None = None) -> str:
    """A time of day in UTC for live lines: ``10:00:12Z``."""
    return (at or datetime.now(UTC)).astimezone(UTC).strftime("%H:%M:%SZ")


def time_text(at: datetime | None) -> str | None:
    return None if at is None else rfc3339(at.timestamp())


def out(line: str = "") -> None:
    """A line on stdout, flushed: live output must show up at once, even in a pipe."""
    print(line, flush=True)


def note(line: str) -> None:
    """Progress and hints go to stderr, so stdout stays the command's result (a table or JSON)."""
    print(line, file=sys.stderr, flush=True)


def out_json(value: Any, *, lines: bool = False) -> None:
    """JSON on stdout: indented for a result, one compact object per line (``lines``) for live streams."""
    if lines:
        out(json.dumps(value, separators=(",", ":"), default=str))
    else:
        out(json.dumps(value, indent=2, default=str))

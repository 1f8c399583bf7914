"""Files for ``apply``: YAML or JSON desired documents, each with the ``node_id`` it is meant for.

A file holds one document, a list of documents, or several YAML documents separated by ``---``. Each is
checked here with the agent's own parser (``agent.protocol.parse_desired``), so what the agent would
refuse is refused before anything is published, with the file, the document and the field named.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import strict_json, written
from agent.exit_codes import EXIT_USAGE
from agent.names import id_problem
from agent.operator.errors import OperatorError
from agent.protocol import Rejected, dumps, parse_desired

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024  # the agent's default limits.max_payload_bytes
# Thousands of documents of a few KiB each; past this a path names something else (/dev/zero, a disk image).
MAX_FILE_BYTES = 64 << 20
STDIN = "-"


@dataclass(frozen=True)
class Planned:
    """One desired document ready to publish once its generation is known."""

    node_id: str
    execution_id: str
    desired_state: str
    body: dict[str, Any]  # the document without node_id and generation, keys in the file's order
    source: str  # "web.yaml, document 2": where to point the operator

    @property
    def name(self) -> str:
        return f"{self.node_id}/{self.execution_id}"

    def document(self, generation: int) -> dict[str, Any]:
        """The payload to publish: execution_id and generation first, so it reads well in a broker UI."""
        return {"execution_id": self.execution_id, "generation": generation, **self.body}


def load_files(paths: list[str], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> list[Planned]:
    """Every document of every file, checked; raises OperatorError (exit 2) at the first bad one."""
    planned: list[Planned] = []
    seen: dict[str, str] = {}
    for path in paths:
        raws = list(_documents_in(path))
        if not raws:
            raise OperatorError(f"{_label(path)}: no desired documents in the file", EXIT_USAGE)
        for index, raw in enumerate(raws, start=1):
            source = _label(path) if len(raws) == 1 else f"{_label(path)}, document {index}"
            item = check_document(raw, source, max_payload_bytes)
            if item.name in seen:
                raise OperatorError(
                    f"{source}: {item.name} is also in {seen[item.name]}; apply each execution once",
                    EXIT_USAGE,
                )
            seen[item.name] = source
            planned.append(item)
    return planned


def check_document(raw: object, source: str, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Planned:
    """One document from a file, validated exactly as the agent will validate it once published."""

    def bad(problem: str) -> OperatorError:
        return OperatorError(f"{source}: {problem}", EXIT_USAGE)

    if not isinstance(raw, dict):
        raise bad(f"a desired document must be a mapping, not {_kind(raw)}")
    body = dict(raw)
    node_id = body.pop("node_id", None)
    if node_id is None:
        raise bad("node_id: required (the node whose agent runs this execution)")
    if not isinstance(node_id, str):
        raise bad(f"node_id: must be a string, not {_kind(node_id)}")
    problem = id_problem(node_id)
    if problem is not None:
        raise bad(f"node_id: {node_id!r} {problem}")
    if "generation" in body:
        # The generation orders documents for the agent; only the broker knows the last one, so apply
        # reads it there. A hand-written one would be ignored as stale or skip numbers.
        raise bad("generation: apply sets it (one above what the broker holds); leave it out")
    execution_id = body.get("execution_id")
    try:
        payload = dumps({**body, "generation": 1})
    except (TypeError, ValueError) as exc:
        raise bad(f"cannot be written as JSON: {exc}") from None  # e.g. a YAML date in details
    parsed = parse_desired(execution_id if isinstance(execution_id, str) else "", payload, max_payload_bytes)
    if isinstance(parsed, Rejected):
        raise bad(parsed.reason)
    document = json.loads(payload)
    del document["generation"]
    del document["execution_id"]
    return Planned(
        node_id=node_id,
        execution_id=str(execution_id),
        desired_state=str(body["desired_state"]["state_type"]),
        body=document,
        source=source,
    )


def _label(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def _documents_in(path: str) -> Iterator[object]:
    """The documents of one file: a ``.json`` file as JSON, anything else as (multi-document) YAML."""
    try:
        text = (
            written.read_stdin(MAX_FILE_BYTES)
            if path == STDIN
            else written.read_text(Path(path), MAX_FILE_BYTES)
        )
        if path.endswith(".json"):
            data = _json(text)
            yield from data if isinstance(data, list) else [data]
            return
        for data in written.load_all(text):
            if data is None:
                continue  # an empty document, e.g. after a trailing `---`
            yield from data if isinstance(data, list) else [data]
    except written.Unreadable as exc:
        raise OperatorError(f"{_label(path)}: {exc}", EXIT_USAGE) from None


def _json(text: str) -> object:
    """JSON read as the agent reads a payload (agent/strict_json.py): no key twice, no NaN, no integer
    past Python's digit limit (a ValueError traceback before), no nesting past 64."""
    try:
        return strict_json.loads(text)
    except (json.JSONDecodeError, strict_json.NotAccepted) as exc:
        raise written.Unreadable(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise written.Unreadable("malformed JSON: nested too deeply") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__

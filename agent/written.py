"""Files people write (the configuration, ``apply``'s documents), read so that no file can hurt the reader.

A path can name anything: ``/dev/zero`` never ends, a YAML file nested ten thousand levels deep takes
PyYAML's recursive composer past the interpreter's recursion limit (a traceback, not a message), and a
few hundred bytes of aliases ("billion laughs": each list nine aliases of the one before) expand to
gigabytes once anything walks them (json.dumps of a 400-byte file took 15 s and 170 MB here). So a read
stops at a size cap, YAML nodes may nest at most :data:`MAX_DEPTH` deep, and aliases may add at most
:data:`MAX_ALIAS_EXPANSION` to what a document spells out. Keys must be unique strings (PyYAML keeps the
last of two equal keys, so a repeated ``mqtt:`` section would silently drop the first, and a key such as
``1:`` or ``true:`` can only be a mistake). Every problem is a :class:`Unreadable` with a one-line
reason; the caller adds the file's name. Loading is PyYAML's SafeLoader (no arbitrary objects); only
these checks are ours, because no YAML library for Python offers them.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from agent.reasons import os_reason

MAX_DEPTH = 64  # mappings and lists inside each other; the deepest real document needs 6
MAX_ALIAS_EXPANSION = 1 << 20  # characters (and nodes) aliases may add to a document, beyond its own text


class Unreadable(ValueError):
    """The file cannot be read as the text it should hold; the message is one line, without the path."""


def read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of the file at ``path``, refusing more than ``limit`` bytes."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise Unreadable(f"cannot read: {os_reason(exc).lower()}") from exc
    return _capped_text(data, limit)


def read_stdin(limit: int) -> str:
    """The UTF-8 text of standard input, refusing more than ``limit`` bytes."""
    try:
        data = sys.stdin.buffer.read(limit + 1)
    except OSError as exc:
        raise Unreadable(f"cannot read: {os_reason(exc).lower()}") from exc
    return _capped_text(data, limit)


def _capped_text(data: bytes, limit: int) -> str:
    if len(data) > limit:
        raise Unreadable(f"larger than {limit} bytes: not a file written for this")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable("cannot read: not UTF-8 text") from exc


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with unique string keys, a depth limit and a budget for what aliases expand to."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Checked before PyYAML recurses into the node: its composer calls itself once per level.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH and not self.check_event(yaml.AliasEvent, yaml.ScalarEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            written = node.end_mark.index - node.start_mark.index
            if _expanded(node, {}) > written + MAX_ALIAS_EXPANSION:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    "its aliases expand to too much (more than 1 MiB beyond the text)",
                    node.start_mark,
                )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a string", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """What walking ``node`` costs with every alias followed: nodes plus scalar characters. Each node is
    counted once and remembered, so this is linear in the nodes written, however much they expand to."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, sizes) for child in node.value)
    else:
        size = 1 + sum(_expanded(k, sizes) + _expanded(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def load(text: str) -> object:
    """The one YAML document of ``text`` (None if empty)."""
    with _as_unreadable():
        return yaml.load(text, Loader=StrictLoader)


def load_all(text: str) -> Iterator[object]:
    """Each YAML document of ``text``, in order (None for an empty one)."""
    with _as_unreadable():
        yield from yaml.load_all(text, Loader=StrictLoader)


@contextmanager
def _as_unreadable() -> Iterator[None]:
    try:
        yield
    except yaml.YAMLError as exc:
        raise Unreadable(f"malformed YAML{_where(exc)}") from exc
    except ValueError as exc:
        raise Unreadable(f"malformed YAML: {_unbuildable(exc)}") from exc


def _unbuildable(exc: ValueError) -> str:
    """PyYAML's constructors call int() and datetime() as they are: an integer of more digits than
    Python converts, or a date such as 2024-13-45, raise a bare ValueError from inside the loader."""
    return f"a value that cannot be built ({' '.join(str(exc).split())[:200]})"


def _where(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # its text names "<unicode string>" on a line of its own
        return (
            f" at character {exc.position + 1}: character #x{exc.character:04x} is not allowed ({exc.reason})"
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ": " + " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = ", ".join(part for part in (exc.context, exc.problem) if part)
    return f"{where}: {what}" if what else where

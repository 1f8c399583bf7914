"""JSON from strangers, read strictly: what Python's json module lets through but the agent cannot keep.

``json.loads`` takes the last of two equal keys, reads ``NaN`` and ``Infinity`` (not JSON), turns ``1e999``
into an infinity, raises a bare ValueError for an integer of more than 4300 digits, and keeps lone
surrogates (``"\\ud800"``) that no UTF-8 writer can store again. Nesting it reads up to a thousand levels,
deeper than pydantic will serialize (the store writes the desired state back as JSON). Each of these
becomes a :class:`NotAccepted` whose message starts with the dotted path of the value, as the validation
errors of agent/protocol.py do. Written with the standard module's hooks rather than another parser: no
maintained one reports duplicate keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64  # objects and arrays inside each other; a desired document needs 5 (spec.probe.exec.command)


class NotAccepted(ValueError):
    """Valid enough for Python's json module, not for the agent; the message says what and where."""


@dataclass(frozen=True)
class _Refused:
    """Stands in for a value the parser must not build; reported with its path once parsing is done."""

    why: str


def loads(payload: bytes | str) -> Any:
    """The JSON value of ``payload``; json.JSONDecodeError, UnicodeDecodeError, NotAccepted or (nested
    past the interpreter's recursion limit) RecursionError if there is none."""
    twice: dict[
        int, str
    ] = {}  # id of an object -> a key it had twice (the object itself is alive till the end)

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            twice[id(obj)] = _repeated(pairs)
        return obj

    value = json.loads(
        payload, object_pairs_hook=build, parse_constant=_constant, parse_float=_float, parse_int=_int
    )
    _check(value, twice)
    return value


def _check(root: Any, twice: dict[int, str]) -> None:
    """The first problem anywhere in ``root``, walked without recursion (it may nest deeper than the stack)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            _refuse(path[:MAX_DEPTH], f"nests more than {MAX_DEPTH} objects and arrays deep")
        if isinstance(value, _Refused):
            _refuse(path, value.why)
        elif isinstance(value, str):
            _check_string(path, value)
        elif isinstance(value, dict):
            if id(value) in twice:
                _refuse((*path, twice[id(value)]), "appears twice in one object")
            for key, child in value.items():
                _check_string((*path, key), key)
                stack.append((child, (*path, key)))
        elif isinstance(value, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(value))


def _refuse(path: tuple[str | int, ...], why: str) -> None:
    raise NotAccepted(f"{'.'.join(str(p) for p in path) or '(document)'}: {why}")


def _check_string(path: tuple[str | int, ...], text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        surrogate = next(c for c in text if "\ud800" <= c <= "\udfff")
        # the path itself would hold the surrogate: name the place without it
        _refuse(
            tuple(p.encode("utf-8", "replace").decode() if isinstance(p, str) else p for p in path),
            f"a string holds a lone surrogate ({surrogate!r}), which has no UTF-8 encoding",
        )


def _repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no key appears twice")


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float | _Refused:
    value = float(text)
    return (
        value
        if math.isfinite(value)
        else _Refused(f"the number {_short(text)} is beyond the range of a float")
    )


def _int(text: str) -> int | _Refused:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return _Refused(f"the integer {_short(text)} has {len(text.lstrip('-'))} digits, too many")


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...{text[-6:]}"

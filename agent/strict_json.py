"""JSON from strangers, read strictly: what Python's json module lets through but the agent cannot keep.

``json.loads`` takes the last of two equal keys, reads ``NaN`` and ``Infinity`` (not JSON), turns ``1e999``
into an infinity, raises a bare ValueError for an integer of more than 4300 digits, and keeps lone
surrogates (``"\\ud800"``) that no UTF-8 writer can store again. Nesting it reads up to a thousand levels,
deeper than pydantic will serialize (the store writes the desired state back as JSON). Each of these
becomes a :class:`NotAccepted` whose message starts with the path of the value (``spec.command[1]``, as
agent/exec_limits.py names fields). Written with the standard module's hooks rather than another parser:
orjson, the common faster one, also takes the last of two equal keys, and has no hook to say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64  # objects and arrays inside each other; a desired document needs 5 (spec.probe.exec.command)


class NotAccepted(ValueError):
    """Valid enough for Python's json module, not for the agent; the message says what and where.

    ``value`` is what was read all the same (a refused value replaced by a marker), for what can still
    be learnt from it.
    """

    def __init__(self, message: str, value: Any) -> None:
        super().__init__(message)
        self.value = value


@dataclass(frozen=True)
class _Refused:
    """Stands in for a value the parser must not build; reported with its path once parsing is done."""

    why: str


def loads(payload: bytes | str) -> Any:
    """The JSON value of ``payload``; json.JSONDecodeError, UnicodeDecodeError, NotAccepted or (nested
    past the interpreter's recursion limit) RecursionError if there is none."""
    # id of an object -> a key it had twice; ids are stable, as every object lives till the end
    twice: dict[int, str] = {}

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            key = _repeated(pairs)
            del obj[key]  # which of its values was meant is anyone's guess: read as neither
            twice[id(obj)] = key
        return obj

    value = json.loads(
        payload, object_pairs_hook=build, parse_constant=_constant, parse_float=_float, parse_int=_int
    )
    problem = _problem(value, twice)
    if problem is not None:
        raise NotAccepted(problem, value)
    return value


def _problem(root: Any, twice: dict[int, str]) -> str | None:
    """The first problem anywhere in ``root``, walked without recursion (it may nest deeper than the stack)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return _at(path[:3], f"nests more than {MAX_DEPTH} objects and arrays deep in here")
        if isinstance(value, _Refused):
            return _at(path, value.why)
        if isinstance(value, str) and (why := _string_problem(value)) is not None:
            return _at(path, why)
        if isinstance(value, dict):
            if id(value) in twice:
                return _at((*path, twice[id(value)]), "appears twice in one object")
            for key, child in value.items():
                if (why := _string_problem(key)) is not None:
                    return _at((*path, key), f"the name of this field: {why}")
                stack.append((child, (*path, key)))
        elif isinstance(value, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(value))
    return None


def _at(path: tuple[str | int, ...], why: str) -> str:
    """``why`` after the path of the value, ``spec.command[1]``, as agent/exec_limits.py names fields."""
    where = ""
    for step in path:
        if isinstance(step, int):
            where += f"[{step}]"
        else:  # a name may hold the very surrogate reported: write it so that it can be published
            name = step.encode("utf-8", "backslashreplace").decode()
            where += f".{name}" if where else name
    return f"{where or '(document)'}: {why}"


def _string_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({text[exc.start]!r}), which has no UTF-8 encoding"
    return None


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

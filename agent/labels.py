"""Node labels (configuration key ``labels``): the rules of Kubernetes labels, which operators know.

A key is ``[prefix/]name``: the name 1 to 63 characters of ``A-Z a-z 0-9 - _ .``, starting and ending
with a letter or digit; the optional prefix a DNS subdomain of at most 253 characters. A value is empty or
follows the name's rules. Placement tools match on these strings, so anything looser (spaces, a
100-character value, a key with two slashes) is refused at start instead of failing a selector later.
"""

from __future__ import annotations

import re

MAX_LABELS = 64
MAX_NAME = 63
MAX_PREFIX = 253
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _name_problem(name: str, what: str) -> str | None:
    if len(name) > MAX_NAME:
        return f"{what} is longer than {MAX_NAME} characters"
    if not _NAME.fullmatch(name):
        return f"{what} must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


def key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (
        not prefix
        or len(prefix) > MAX_PREFIX
        or not all(_DNS_LABEL.fullmatch(part) for part in prefix.split("."))
    ):
        return "the prefix before '/' must be a DNS subdomain (lower-case labels split by '.', at most 253 characters)"
    return _name_problem(name, "the name")


def value_problem(value: str) -> str | None:
    return None if value == "" else _name_problem(value, "the value")


def labels_problems(labels: dict[str, str]) -> list[str]:
    """What is wrong with ``labels``, one entry per bad key or value, each naming it; empty if all is well."""
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(f"at most {MAX_LABELS} labels, not {len(labels)}")
    for key, value in labels.items():
        problem = key_problem(key)
        if problem is not None:
            problems.append(f"key {key!r}: {problem}")
        problem = value_problem(value)
        if problem is not None:
            problems.append(f"{key!r}: value {value!r}: {problem}")
    return problems

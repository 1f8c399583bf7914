"""Names that become MQTT topic segments: node, execution and job ids.

They are checked in one place because a bad name is not just bad data: a `/`, `+` or `#` would change
which topics a message reaches.
"""

import re

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """True if ``value`` may be used as a node, execution or job id (and so as a topic segment)."""
    return bool(_ID.fullmatch(value))


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid id, in words an operator can act on, or None if it is valid."""
    if is_valid_id(value):
        return None
    if not value:
        return "must not be empty"
    if len(value) > 128:
        return f"is {len(value)} characters long; at most 128 are allowed"
    bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
    return f"contains {', '.join(repr(c) for c in bad)}; only A-Z a-z 0-9 . _ - are allowed"

"""Names that become MQTT topic segments (node, execution and job ids, the topic prefix), and the broker's host.

They are checked in one place because a bad name is not just bad data: a `/`, `+` or `#` would change
which topics a message reaches.
"""

import ipaddress
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


# A topic is at most 65535 bytes; the prefix leaves room for the node and execution ids and the rest.
MAX_PREFIX_BYTES = 1024
MAX_HOST_NAME = 253  # characters of a DNS name, 63 of each label (RFC 1035)
MAX_LABEL = 63


def topic_prefix_problem(value: str) -> str | None:
    """Why ``value`` cannot be the literal topic prefix of every topic (``reconcile/v1``), or None."""
    if not value:
        return "must not be empty"
    if "+" in value or "#" in value:
        return f"{value!r} contains an MQTT wildcard ('+' or '#'); a prefix must be literal"
    if value.startswith("/") or value.endswith("/"):
        return f"{value!r} must not start or end with '/'"
    if "\0" in value:
        return "contains a NUL byte, which no MQTT topic may hold"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        return f"is longer than {MAX_PREFIX_BYTES} bytes"
    return None


def host_problem(value: str) -> str | None:
    """Why ``value`` is neither an IP address nor a host name the resolver can be asked for, or None.

    Checked before connecting: a label over 63 characters made the resolver's IDNA encoding raise a
    UnicodeError out of the MQTT client."""
    if not value:
        return "must not be empty"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return None
    if any(c.isspace() or c in "\0/" for c in value):
        return f"{value[:80]!r} is no host name: it holds a space, a '/' or a NUL byte"
    labels = value.removesuffix(".").split(".")
    if len(value) > MAX_HOST_NAME or any(not 0 < len(label) <= MAX_LABEL for label in labels):
        return f"{value[:80]!r} is no host name: at most {MAX_HOST_NAME} characters, {MAX_LABEL} between dots"
    try:
        value.encode("idna")
    except UnicodeError:
        return f"{value[:80]!r} is no host name the resolver can be asked for"
    return None

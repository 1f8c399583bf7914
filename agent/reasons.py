"""Why a file operation failed, in the few words an error message of the agent ends with.

Owns the wording of an OSError in messages (config, TLS files, log rotation, results archive, the
operator CLI), so one failure reads the same wherever it is told. Pure: no I/O, no imports of the agent.
"""

from __future__ import annotations


def os_reason(exc: OSError) -> str:
    """``permission denied``: for a message that names the file itself."""
    return exc.strerror.lower() if exc.strerror else str(exc)


def os_reason_at(exc: OSError) -> str:
    """``permission denied: /path``: for a message that does not name the file."""
    return f"{exc.strerror.lower()}: {exc.filename}" if exc.strerror and exc.filename else str(exc)

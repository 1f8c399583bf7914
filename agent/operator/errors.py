"""How the operator commands fail: one line for the operator and an exit status for scripts."""

from __future__ import annotations

from agent.exit_codes import EXIT_FAILED


class OperatorError(Exception):
    """A failure to report as ``reconcile-agent: <message>`` and exit with ``exit_code``, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

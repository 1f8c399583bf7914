"""How the operator commands fail: one line for the operator and an exit status for scripts."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # broker unreachable, unknown execution, a workload that did not reach what was asked
EXIT_USAGE = 2  # a bad file, argument or configuration: the same status argparse uses
EXIT_INTERRUPTED = 130  # Ctrl-C during a command that had not finished (apply, delete)


class OperatorError(Exception):
    """A failure to report as ``reconcile-agent: <message>`` and exit with ``exit_code``, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

"""The exit statuses of every command of ``reconcile-agent`` (the agent itself and the operator CLI).

Owns the numbers scripts and systemd see (docs/cli.md); nothing else. Pure: no imports.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the agent: a loop failed; the operator CLI: broker unreachable, unknown execution, a
# workload that did not reach what was asked
EXIT_USAGE = 2  # bad input: an argument, a file or the configuration (argparse's status too); the agent
# also when it cannot start with its state or another agent acts for its node id
EXIT_INTERRUPTED = 130  # the shell's convention for a SIGINT: Ctrl-C before a command had finished
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a filter killed by a closed pipe returns in the shell

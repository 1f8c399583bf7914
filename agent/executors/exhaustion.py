"""A limit of the node reached at spawn: which one, said in terms an operator can act on.

A spawn that fails for want of descriptors, processes or memory is not the workload's fault and says
nothing about its spec: the failure reason names the limit (and how to raise it), and the node status
carries the latest such failure until a spawn succeeds again (docs/protocol.md, Node status).
"""

from __future__ import annotations

import errno
import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class LimitReached:
    limit: str  # "open_files", "system_open_files", "processes" or "memory"
    message: str
    at: float  # wall-clock epoch seconds of the failed spawn


def limit_reached(exc: OSError, at: float) -> LimitReached | None:
    """The node's limit behind ``exc``, or None if it is another failure."""
    if exc.errno == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return LimitReached(
            "open_files",
            f"the agent has reached its open-files limit (soft {soft}, hard {hard}): raise LimitNOFILE= "
            "in its systemd unit (or the hard limit it is started with)",
            at,
        )
    if exc.errno == errno.ENFILE:
        return LimitReached(
            "system_open_files", "the system's open-files table is full (sysctl fs.file-max)", at
        )
    if exc.errno == errno.EAGAIN:
        return LimitReached(
            "processes",
            "no more processes can be started (the user's process limit, the unit's TasksMax= or a pids "
            "cgroup limit, or kernel.pid_max)",
            at,
        )
    if exc.errno == errno.ENOMEM:
        return LimitReached("memory", "the node is out of memory for a new process", at)
    return None

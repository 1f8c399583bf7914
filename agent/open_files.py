"""The open-files limit: the agent takes all it may have, and its workloads get what they would have had.

A service starts with a soft RLIMIT_NOFILE of 1024 (systemd's default, kept low for programs that still
use select(2)) under a much higher hard limit (524288). The agent holds descriptors for its socket, its
store, a pidfd per watched workload and the pipes of each spawn, so 1024 tops out near a thousand
workloads. Like Go's runtime for every Go daemon, the agent raises its own soft limit to the hard limit
when it starts, and hands each workload the soft limit it was started with (supervisor.sh applies it),
so a workload sees exactly the limit it would have had without the agent in between.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("agent.open_files")

_started_with: int | None = None  # the soft limit before raise_to_hard(), once it ran in this process


def raise_to_hard() -> None:
    """Raise the soft open-files limit to the hard limit, remembering the soft limit as found."""
    global _started_with  # noqa: PLW0603  (once per process: the limit is a property of the process)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _started_with is None:
        _started_with = soft
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # an unlimited hard limit above the kernel's nr_open, a filter
        log.warning("cannot raise the open-files limit", soft=soft, hard=hard, error=str(exc))
        return
    log.info("open-files limit raised", soft=hard, was=soft)


def workload_limit() -> int:
    """The soft open-files limit for workloads: the agent's own as it was started."""
    if _started_with is not None:
        return _started_with
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def current() -> tuple[int, int]:
    """The agent's own (soft, hard) open-files limit now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)

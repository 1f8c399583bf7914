"""A runtime wired as the daemon wires it (agent/daemon.py), without MQTT: for tests and benchmarks that
drive ``Runtime.apply`` or ``Runtime.run`` on a real store and a real executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from agent.clock import Clock
from agent.core.events import Event
from agent.executors.process import ProcessExecutor
from agent.inbox import Inbox
from agent.outbox import Outbox
from agent.probes import Prober
from agent.protocol import Topics
from agent.results.publishers import Publishers
from agent.runtime import Runtime
from agent.store import Store
from agent.tasks import Tasks

ProberFactory = Callable[
    [Callable[[str, Event], None], Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]], Prober
]


def standalone_runtime(
    store: Store,
    executor: ProcessExecutor,
    topics: Topics,
    publishers: Publishers,
    prober: ProberFactory = Prober,
) -> Runtime:
    """A started runtime (store loaded and checked); ``run()`` it to recover and decide from its inbox."""
    inbox, tasks = Inbox(), Tasks(topics.node_id)
    runtime = Runtime(
        store,
        executor,
        topics,
        Outbox(),
        publishers,
        clock=Clock(asyncio.get_running_loop()),
        inbox=inbox,
        tasks=tasks,
        prober=prober(inbox.submit, tasks.start),
    )
    runtime.start()
    return runtime

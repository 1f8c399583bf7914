"""The agent as one unit: store, runtime, MQTT link (and the embedded broker) under one TaskGroup.

``Agent`` is an async context manager: entering it opens the store and starts every long-lived loop as
a named task of its TaskGroup; leaving it publishes ``offline``, cancels the loops and closes the store.
Workloads are never touched on the way out. ``run_agent`` is the CLI's entry point: signal handlers only
set a flag, and the agent runs until that flag is set or a loop fails.

Owns the wiring: it builds every part and hands each its collaborators (agent/runtime.py, agent/intake.py,
agent/mqtt.py, agent/metrics.py, ...), and the node status document. It decides nothing and touches no
execution's state itself: that is the runtime's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import structlog

from agent import __version__, open_files
from agent.broker import BrokerStartError, embedded_broker
from agent.capacity import CapacityWatch, measure
from agent.client_options import client_settings
from agent.clock import Clock
from agent.config import AgentConfig, ConfigError
from agent.executors import native
from agent.executors.logs import rotate_forever
from agent.executors.process import ProcessExecutor
from agent.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from agent.identity import IdentityConflict
from agent.inbox import Inbox
from agent.intake import Intake
from agent.log_service import LogService, LogSource
from agent.metrics import Metrics, Sources
from agent.metrics_http import Endpoint
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from agent.probes import Prober
from agent.protocol import Topics, rfc3339
from agent.results.publishers import Publishers
from agent.results.s3 import environment_has_credentials
from agent.resync import Resync
from agent.runtime import Runtime
from agent.store import Store, StoreError
from agent.systemd import SystemdNotifier
from agent.tasks import Tasks
from agent.tls import tls_context

log = structlog.get_logger("agent.daemon")

HOSTNAME = socket.gethostname()


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix, config.node_id)
        self.started_at = time.time()
        self.log = log.bind(node=config.node_id)
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Agent:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        config = self.config
        self.store = Store(config.state_dir / "agent.db", config.node_id)
        self._stack.callback(self.store.close)
        self.outbox = Outbox()
        self.publishers = Publishers(
            config.results_path, config.limits.max_results_bytes, await _s3_credentials(config)
        )
        inbox, effects = Inbox(), Tasks(config.node_id)
        # Before the first spawn, in a thread: a first start on a node compiles it (a fraction of a second).
        supervisor = await asyncio.to_thread(native.build, native.cache_dir(config.state_dir))
        self.runtime = Runtime(
            self.store,
            ProcessExecutor(
                config.state_dir,
                open_files=open_files.workload_limit(),
                workload_logs=config.workload_logs,
                native_supervisor=supervisor,
            ),
            self.topics,
            self.outbox,
            self.publishers,
            clock=Clock(asyncio.get_running_loop()),
            inbox=inbox,
            tasks=effects,
            prober=Prober(inbox.submit, effects.start),
            max_executions=config.limits.max_executions,
        )
        self.runtime.start()
        containment = self.runtime.executor.containment
        self.logs = LogService(self.topics, self.log_source, config.limits.max_payload_bytes)
        self.intake = Intake(
            self.topics,
            config.limits.max_payload_bytes,
            self.runtime,
            self.publishers.problem,
            containment.refusal,
            on_log_request=self.logs.on_request,
        )
        if config.mqtt.embedded:
            await self._stack.enter_async_context(embedded_broker(config.mqtt.host, config.mqtt.port))
        settings = client_settings(
            host=config.mqtt.host,
            port=config.mqtt.port,
            client_id=config.client_id,
            keepalive_s=config.mqtt.keepalive_s,
            username=config.mqtt.username,
            password=config.mqtt_password(),
            tls_context=tls_context(config),
        )
        self.resync = Resync(
            settings=settings,
            topics=self.topics,
            instance_id=self.store.instance_id,
            runtime=self.runtime,
            intake=self.intake.on_message,
            interval_s=config.mqtt.resync_interval_s,
        )
        self.link = MqttLink(
            settings=settings,
            instance_id=self.store.instance_id,
            topics=self.topics,
            store=self.store,
            outbox=self.outbox,
            node_status=self.node_status,
            on_message=self.resync.on_message,
            log_replies=self.logs.replies,
        )
        self.link.on_connect.append(self.resync.connected)
        self.link.on_connect.append(self._republish_unless)
        self.capacity = CapacityWatch(
            lambda: measure(config.state_dir), lambda: self.outbox.changed(node_status=True)
        )
        self.metrics = Metrics(
            config.node_id,
            Sources(
                counts=self.runtime.counts,
                connected=self.link.connected.is_set,
                outbox_depth=self.store.depth,
                now=self.runtime.clock.now,
            ),
        )
        self.metrics_endpoint = Endpoint(self.metrics)
        self.runtime.observers.append(self.metrics.observe_decision)
        self.runtime.node_event_observers.append(self.metrics.observe_node_event)
        self.link.on_published.append(self.metrics.observe_published)
        self.notifier = SystemdNotifier.from_environment()
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = [
            # The runtime acts (re-adopts, resumes timers, starts workloads) once the link has checked that
            # no other agent acts for this node id; the watchdog and the rest run meanwhile.
            ("runtime", self.runtime.run(after=self.link.checked)),
            ("mqtt", self.link.run()),
            ("resync", self.resync.run()),
            ("capacity", self.capacity.run()),
            ("log-requests", self.logs.run()),
            (
                "workload-logs",
                rotate_forever(self.runtime.executor.root, **config.workload_logs.model_dump()),
            ),
        ]
        if config.metrics.address is not None:
            loops.append(("metrics", self.metrics_endpoint.serve(config.metrics.address)))
        if self.notifier is not None:
            loops.append(("watchdog", self.notifier.watchdog_forever()))
        group = await self._stack.enter_async_context(asyncio.TaskGroup())
        for name, coro in loops:
            task = group.create_task(coro, name=name)
            task.add_done_callback(run_forever(name))
            self._tasks.append(task)
        self.runtime.node_event(
            "agent_started", agent_version=__version__, started_at=rfc3339(self.started_at)
        )
        self.log.info("agent started", version=__version__, state_dir=str(config.state_dir))
        if self.notifier is not None:
            await self.link.first_attempt.wait()
            self.notifier.ready()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        await self.link.drain()
        await self.link.say_offline()
        for task in self._tasks:
            task.cancel()
        await self._stack.__aexit__(exc_type, exc, tb)
        self.runtime.executor.release()
        self.log.info("agent stopped")

    def log_source(self, execution_id: str) -> LogSource | None:
        """What the log service needs of an execution the agent knows, or None (agent/log_service.py)."""
        execution = self.runtime.executions.get(execution_id)
        if execution is None:
            return None
        running = execution.spawn_pending or (
            execution.process is not None and execution.process.attempt == execution.attempt
        )
        return LogSource(self.runtime.executor.run_dir(execution_id), execution.attempt, running)

    def _republish_unless(self, session_present: bool) -> None:
        if not session_present:
            self.runtime.republish()

    def node_status(self, state: str) -> dict[str, Any]:
        return {
            "node_id": self.config.node_id,
            "state": state,
            "agent_version": __version__,
            "instance_id": self.store.instance_id,
            "hostname": HOSTNAME,
            "started_at": rfc3339(self.started_at),
            "updated_at": rfc3339(time.time()),
            "executions": self.runtime.counts(),
            "labels": dict(self.config.labels),
            "capacity": self.capacity.current.document(),
            "max_executions": self.config.limits.max_executions,
            "cordoned": self.runtime.control.cordoned,
            "capabilities": self.capabilities(),
            "limit_reached": self.limit_reached(),
        }

    def limit_reached(self) -> dict[str, Any] | None:
        """The node's limit the latest spawn failed on, until a spawn succeeds (docs/protocol.md)."""
        reached = self.runtime.executor.limit_reached
        if reached is None:
            return None
        return {"limit": reached.limit, "message": reached.message, "at": rfc3339(reached.at)}

    def capabilities(self) -> dict[str, Any]:
        """What this agent accepts (PROTOCOL.md, node status): built here only, one key per concern."""
        containment = self.runtime.executor.containment
        return {
            "engines": ["process"],
            "probes": ["exec", "http", "tcp"],
            "publishers": self.publishers.types,
            "logs": True,  # log requests served (agent/log_service.py)
            "containment": containment.kind,
            "limits": containment.limits,
        }


async def _s3_credentials(config: AgentConfig) -> Callable[[], tuple[str, str] | None] | None:
    """How the s3 publisher gets its credentials, or None when this node has no s3 publisher."""
    if config.publishers.s3 is None:
        return None
    if config.s3_credentials() is not None:  # the files are readable now (a ConfigError if not)
        return config.s3_credentials
    # Off the loop: the standard chain may ask the instance metadata service, which takes a while.
    if await asyncio.to_thread(environment_has_credentials):
        return lambda: None
    log.warning("publishers.s3 is configured without files and the AWS environment has no credentials: no s3")
    return None


def leaf(group: BaseExceptionGroup[IdentityConflict]) -> BaseException:
    """The first exception of a group, however deeply nested (the link's loops nest theirs)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def run_forever(name: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback for tasks that should never end: say so loudly if one does."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            log.error("task ended", task=name, error=repr(task.exception()))

    return done


async def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM or SIGINT; 0 on a clean stop, 1 if a loop failed, 2 if the agent cannot start or
    another agent acts for its node id."""
    open_files.raise_to_hard()  # before anything opens: workloads get the limit as it was
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    code = EXIT_OK
    try:
        async with Agent(config):
            await stop.wait()
    except* (StoreError, BrokerStartError, ConfigError) as group:
        log.error("cannot start", error="; ".join(str(e) for e in group.exceptions))
        code = EXIT_USAGE
    except* IdentityConflict as group:
        # Whether at start or later: the other agent keeps the node, and a restart would not change that.
        log.error("stopped: another agent acts for this node id", error=str(leaf(group)))
        code = EXIT_USAGE
    except* Exception as group:
        log.error("agent failed", errors=[repr(e) for e in group.exceptions])
        code = EXIT_FAILED
    return code

"""The runtime: applies lifecycle decisions. One consumer of one event queue, so one writer per execution.

For every event it loads the execution, asks :func:`agent.core.lifecycle.decide`, commits the new state
with its outbox messages in one transaction, wakes the publisher, then carries out the side effects
(spawn, signal, timers). Effects report back as new events on the same queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from agent import mailbox
from agent.boot import boot_time
from agent.core.actions import (
    Action,
    ClearStatus,
    EmitEvent,
    Forget,
    Publish,
    PublishStatus,
    Signal,
    Spawn,
    Tell,
)
from agent.core.clock import Now
from agent.core.events import (
    Event,
    ProcessExited,
    ProcessStarted,
    Published,
    PublishFailed,
    PublishResumed,
    SpawnFailed,
    SpawnLost,
    TimerFired,
)
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, NeverAccepted, ProcessRef
from agent.core.reboot import after_reboot
from agent.core.status import event_document
from agent.executors.process import ProcessExecutor, SpawnError
from agent.probes import Prober
from agent.protocol import OBSERVED_STATES, Topics, dumps
from agent.results.errors import PublishError
from agent.results.publishers import Publishers
from agent.store import Message, Store, StoreError

log = structlog.get_logger("agent.runtime")
STORE_RETRY_S = 1.0
EFFECT_RETRY_MIN_S = 0.1
EFFECT_RETRY_MAX_S = 5.0


class Clock:
    """The runtime's two clocks (agent/core/clock.py): the wall clock as it reads, and the boot clock.

    The boot clock is read off the event loop's monotonic clock, anchored to CLOCK_BOOTTIME once, so the
    core's deadlines and the loop's timers (``loop.call_at``) are the same clock: a step of the wall
    clock moves neither. Published times read the wall clock afresh, so they follow a corrected clock.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._anchor = boot_time() - loop.time()

    def now(self) -> float:
        return time.time()

    def boot(self) -> float:
        return self._anchor + self._loop.time()

    def moment(self) -> Now:
        return Now(wall=self.now(), boot=self.boot())

    def loop_time(self, boot: float) -> float:
        return boot - self._anchor


@dataclass
class Outbox:
    """The wake-up side of the outbox: a flag the publisher waits on, set once however many changes."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set by the publisher: all queued is out
    node_status_dirty: bool = True

    def changed(self, node_status: bool = False) -> None:
        self.node_status_dirty = self.node_status_dirty or node_status
        self.idle.clear()
        self.wake.set()


@dataclass(frozen=True)
class Decided:
    """One committed decision, as observers (metrics) see it."""

    execution_id: str
    event: Event
    before: Execution | Absent
    after: Execution | Absent
    actions: list[Action]
    at: float  # the runtime clock's wall time of the decision


class Runtime:
    def __init__(
        self,
        store: Store,
        executor: ProcessExecutor,
        topics: Topics,
        outbox: Outbox,
        publishers: Publishers,
    ) -> None:
        self.store = store
        self.executor = executor
        self.publishers = publishers
        self._publishing: dict[str, asyncio.Task[None]] = {}  # a try in flight, by execution
        self.topics = topics
        self.outbox = outbox
        # Only what was accepted: an execution that is nothing but a rejection lives in the store alone.
        self.executions: dict[str, Execution] = store.load()
        self.clock = Clock(asyncio.get_running_loop())  # created inside the agent's loop
        if store.previous_boot is not None:
            moment = self.clock.moment()
            self.executions = {eid: after_reboot(e, moment) for eid, e in self.executions.items()}
            store.start_boot(self.executions.values())
            log.info(
                "the machine rebooted since the state was stored: old deadlines dropped", node=topics.node_id
            )
        self._check_no_workload_forgotten()
        self._queue: asyncio.Queue[tuple[str, Event, int | None]] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self.log = log.bind(node=topics.node_id)
        # Called after every committed decision; an observer must be quick and must not raise.
        self.observers: list[Callable[[Decided], None]] = []
        self.prober = Prober(self.submit, self._background)

    def _check_no_workload_forgotten(self) -> None:
        """Refuse to start if a live workload is unknown to the store: the store has lost writes.

        Starting anyway would silently forget a running workload (and could start it a second time).
        """
        for execution_id, attempt, pid_file in self.executor.running_attempts():
            known = self.executions.get(execution_id)
            if known is None or known.attempt < attempt:
                raise StoreError(
                    f"{pid_file}: this workload is running but {self.store.path} does not know it "
                    f"(attempt {attempt} of {execution_id!r}); the state database has lost writes, for example "
                    "a removed agent.db-wal or a restored old copy. Restore the database, or stop the workload "
                    "and remove its directory, then start the agent again."
                )

    def submit(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None:
        """Queue an event; safe from any callback on the loop. ``mail_seq``: its row in the mailbox."""
        self._queue.put_nowait((execution_id, event, mail_seq))

    def counts(self) -> dict[str, int]:
        counted = Counter(e.state_type for e in self.executions.values())
        counted["failed"] += self.store.never_accepted_count  # their status says `failed`, so do the counts
        return {state: counted[state] for state in OBSERVED_STATES if counted[state]}

    def node_event(self, event_type: str, once: str | None = None, **fields: Any) -> None:
        """Queue an event that belongs to the node, not to one execution; with ``once``, only ever once."""
        doc = event_document(event_type, self.topics.node_id, None, self.clock.now(), **fields)
        messages = [Message(self.topics.events, dumps(doc), retain=False)]
        try:
            if once is None:
                self.store.queue(messages)
            elif not self.store.queue_once(once, messages):
                return
        except StoreError as exc:
            self.log.error("cannot queue a node event; dropped", type=event_type, error=str(exc))
            return
        self.outbox.changed()

    async def run(self, after: asyncio.Event | None = None) -> None:
        """Decide events for ever, once ``after`` is set if given (queued events wait for it)."""
        if after is not None:
            await after.wait()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._recover()
                while True:
                    execution_id, event, mail_seq = await self._queue.get()
                    self.apply(execution_id, event, mail_seq)
        finally:
            await self.prober.close()
            self.publishers.close()

    # --- one event --------------------------------------------------------------------------------

    def apply(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None:
        state: Execution | Absent | None = self.executions.get(execution_id)
        if state is None:
            rejected_only = self.store.never_accepted(execution_id)
            state = (
                rejected_only.execution()
                if rejected_only is not None
                else Absent(
                    execution_id=execution_id,
                    node_id=self.topics.node_id,
                    revision=self.store.high_water(execution_id),
                )
            )
        if isinstance(state, Execution):
            state = self._sampled(state, event)
        try:
            new, actions = decide(state, event, self.clock.moment())
        except Exception:
            # A bug in a rule must not take every other workload down, nor crash-loop the agent on a
            # retained document that comes back at every start: report it and leave the state as it is.
            self.log.exception(
                "decision failed; event dropped", execution=execution_id, cause=type(event).__name__
            )
            return
        tells = [a for a in actions if isinstance(a, Tell)]
        try:
            if new == state and not actions:
                if mail_seq is not None:
                    self.store.consume(mail_seq)
                return
            # Bad documents under ever new ids must not grow the agent: keep those on disk, compactly.
            rejected_only = NeverAccepted.of(new) if isinstance(new, Execution) else None
            sent = self.store.commit(
                rejected_only or new,
                [m for a in actions if (m := self._message(a)) is not None],
                [(t.execution_id, mailbox.encode(t.event)) for t in tells],
                consumed=mail_seq,
            )
        except StoreError as exc:
            # Nothing was applied: keep the event and try again, rather than act on an unrecorded decision.
            self.log.error("cannot record a decision; retrying", execution=execution_id, error=str(exc))
            loop = asyncio.get_running_loop()
            loop.call_later(STORE_RETRY_S, self.submit, execution_id, event, mail_seq)
            return
        for tell, seq in zip(tells, sent, strict=True):
            self.submit(tell.execution_id, tell.event, seq)
        before = state.state_type if isinstance(state, Execution) else None
        after = new.state_type if isinstance(new, Execution) else None
        if isinstance(new, Execution) and rejected_only is None:
            self.executions[execution_id] = new
        else:
            self.executions.pop(execution_id, None)
        self.outbox.changed(node_status=before != after)
        decided = Decided(execution_id, event, state, new, actions, self.clock.now())
        for observer in self.observers:
            observer(decided)
        bound = self.log.bind(execution=execution_id, revision=new.revision)
        if before != after:
            bound.info("transition", cause=type(event).__name__, observed=after, previous=before)
        for action in actions:
            self._carry_out(action, bound)
        self._schedule(execution_id, new)
        self._sync_probe(new)

    def _sampled(self, state: Execution, event: Event) -> Execution:
        """``state`` with a fresh usage sample of its workload's cgroup, so whatever the decision
        publishes carries one (a few small reads; nothing without a cgroup)."""
        ref = event.ref if isinstance(event, ProcessStarted) else state.process
        try:
            usage = None if ref is None else self.executor.usage(ref, self.clock.now())
        except Exception:  # a figure is never worth a decision: decide without a fresh one
            self.log.exception("cannot sample usage", execution=state.execution_id)
            usage = None
        return state if usage is None else state.model_copy(update={"usage": usage})

    def _sync_probe(self, state: Execution | Absent) -> None:
        try:
            self.prober.sync(state)
        except Exception:
            # Without its probe a run never passes validation: its deadline fails it, so it cannot hang.
            self.log.exception("cannot start or stop a probe", execution=state.execution_id)

    def _message(self, action: Action) -> Message | None:
        match action:
            case PublishStatus(execution_id=eid, document=document):
                return Message(self.topics.status(eid), dumps(document), retain=True)
            case ClearStatus(execution_id=eid):
                return Message(self.topics.status(eid), b"", retain=True)
            case EmitEvent(document=document):
                return Message(self.topics.events, dumps(document), retain=False)
        return None

    def _carry_out(self, action: Action, bound: Any) -> None:
        match action:
            case Spawn(execution_id=eid, attempt=attempt):
                self._background(self._spawn(action), f"spawn:{eid}:{attempt}")
            case Signal(execution_id=eid, ref=ref, signal=name):
                try:
                    delivered = self.executor.signal(ref, name)
                except Exception as exc:
                    # Undelivered is not delivered: the stop waits on the workload's exit, so try again.
                    bound.warning("cannot signal; retrying", signal=name, pid=ref.pid, error=repr(exc))
                    self._background(self._signal_retrying(eid, ref, name), f"signal:{eid}:{ref.attempt}")
                    return
                bound.info("signal", signal=name, pid=ref.pid, delivered=delivered)
            case Forget(execution_id=eid, job_id=job_id):
                in_flight = self._publishing.get(eid)
                if in_flight is None:
                    self._remove_results(job_id, eid, bound)
                else:  # a local archive could still appear: remove it once the try has ended
                    in_flight.add_done_callback(lambda _: self._remove_results(job_id, eid, bound))
                try:
                    self.executor.remove(eid)
                except Exception as exc:  # its files stay behind; nothing waits on them
                    bound.error("cannot remove the execution's files", error=repr(exc))
                    return
                bound.info("forgotten")
            case Publish(execution_id=eid, try_no=try_no):
                task = self._background(self._publish(action), f"publish:{eid}:{try_no}")
                self._publishing[eid] = task
                task.add_done_callback(lambda done: self._publish_ended(eid, done))

    def _remove_results(self, job_id: str, execution_id: str, bound: Any) -> None:
        try:
            self.publishers.remove(job_id, execution_id)
        except Exception as exc:  # the archive stays behind; nothing waits on it
            bound.error("cannot remove the execution's results", error=repr(exc))

    def _schedule(self, execution_id: str, state: Execution | Absent) -> None:
        """Keep one loop timer per execution, for its earliest deadline."""
        handle = self._timers.pop(execution_id, None)
        if handle is not None:
            handle.cancel()
        if not isinstance(state, Execution) or state.next_timer is None:
            return
        name, deadline = state.next_timer
        loop = asyncio.get_running_loop()
        self._timers[execution_id] = loop.call_at(
            self.clock.loop_time(deadline), self.submit, execution_id, TimerFired(name)
        )

    # --- effects that report back ---------------------------------------------------------------

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tasks is not None

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                # One workload's trouble must not take the agent, and every other workload, down with it.
                self.log.exception("background task failed", task=name)

        return self._tasks.create_task(guarded(), name=name)

    async def _spawn(self, spawn: Spawn) -> None:
        try:
            ref = await self.executor.spawn(spawn.execution_id, spawn.attempt, spawn.spec)
        except SpawnError as exc:
            self.submit(spawn.execution_id, SpawnFailed(spawn.attempt, str(exc)))
            return
        except Exception as exc:
            # Whatever a spawn raises resolves its attempt: an execution must never wait in `starting`
            # for a report that will not come (the executor's contract says SpawnError, but a thread
            # that cannot be started, say, raises RuntimeError before the executor runs at all).
            self.log.exception("spawn failed unexpectedly", execution=spawn.execution_id)
            self.submit(spawn.execution_id, SpawnFailed(spawn.attempt, f"{type(exc).__name__}: {exc}"))
            return
        self.submit(spawn.execution_id, ProcessStarted(ref))
        await self._watch(spawn.execution_id, ref)

    async def _publish(self, publish: Publish) -> None:
        eid = publish.execution_id
        try:
            results = await self.publishers.publish(
                publish, self.executor.run_dir(eid), self.executor.output_dir(eid, publish.attempt)
            )
        except PublishError as exc:
            self.log.warning(
                "publishing results failed", execution=eid, error=exc.reason, try_no=publish.try_no
            )
            self.submit(eid, PublishFailed(publish.try_no, exc.reason, exc.retryable))
            return
        except Exception as exc:  # a bug: report it as a failed try, so the deadline still ends it
            self.log.exception("publishing results failed unexpectedly", execution=eid)
            self.submit(eid, PublishFailed(publish.try_no, f"internal error: {exc!r}", retryable=True))
            return
        self.submit(eid, Published(publish.try_no, results))

    def _publish_ended(self, execution_id: str, task: asyncio.Task[None]) -> None:
        if self._publishing.get(execution_id) is task:
            del self._publishing[execution_id]

    async def _watch(self, execution_id: str, ref: ProcessRef) -> None:
        """Report how ``ref`` ended. What fails on the way is tried again: the exit will come, and an
        error (out of descriptors, say) is never evidence that the workload ended or how."""
        async for attempt in _persistently():
            with attempt:
                await self.executor.wait(ref)
                # Gone means every process of it: leftovers in its cgroup are killed (or, in a stop, get
                # the rest of the grace period) and waited for before anyone hears it ended.
                remains = await self.executor.clear(ref, lambda: self._stopping(execution_id, ref))
                outcome = self.executor.outcome(execution_id, ref.attempt)
        self.submit(
            execution_id,
            ProcessExited(
                ref.attempt,
                outcome.exit_code,
                outcome.stdout,
                outcome.stderr,
                leftovers=remains.leftovers,
                oom_kills=remains.oom_kills,
                usage=remains.usage,
            ),
        )

    def _stopping(self, execution_id: str, ref: ProcessRef) -> bool:
        current = self.executions.get(execution_id)
        return current is not None and current.process == ref and current.state_type == "stopping"

    async def _signal_retrying(self, execution_id: str, ref: ProcessRef, name: str) -> None:
        async for attempt in _persistently():
            with attempt:
                current = self.executions.get(execution_id)
                if current is None or current.process != ref:
                    return  # that workload has been accounted for meanwhile
                delivered = self.executor.signal(ref, name)
        self.log.info("signal", execution=execution_id, signal=name, pid=ref.pid, delivered=delivered)

    def _recover(self) -> None:
        """Re-adopt what the agent had started before it stopped, and account for what ended meanwhile."""
        for seq, recipient, text in self.store.mail():  # decided before the stop, not yet acted on
            self.submit(recipient, mailbox.decode(text), seq)
        known: set[str] = set()
        for execution_id, execution in self.executions.items():
            self._sync_probe(execution)
            self._schedule(execution_id, execution)
            if execution.publishing is not None and execution.publishing.in_flight:
                self.submit(execution_id, PublishResumed())  # its outcome died with the agent: try again
            ref = execution.process
            if ref is None and execution.spawn_pending:
                ref = self.executor.find(execution_id, execution.attempt)
                if ref is None:
                    self.submit(execution_id, SpawnLost(execution.attempt))
                    continue
                self.submit(execution_id, ProcessStarted(ref))
            if ref is None:
                continue
            if ref.cgroup is not None:
                known.add(ref.cgroup)
            bound = self.log.bind(execution=execution_id, revision=execution.revision, pid=ref.pid)
            try:
                alive = self.executor.is_alive(ref)
            except OSError as exc:  # the watcher looks again until it can tell
                bound.warning("cannot tell yet whether the workload runs", error=str(exc))
            else:
                bound.info("re-adopting" if alive else "ended while the agent was away")
            self._background(self._watch(execution_id, ref), f"watch:{execution_id}:{ref.attempt}")
        # Cgroups of attempts no one accounts for (the agent died between creating one and recording its
        # spawn, or after a workload ended and before its cgroup was removed): nothing in them may run on.
        for cgroup in self.executor.orphan_cgroups(known):
            self.log.warning(
                "killing and removing an attempt's cgroup nobody accounts for", cgroup=str(cgroup)
            )
            self._background(self.executor.discard(cgroup), f"discard:{cgroup.name}")


def _persistently() -> AsyncRetrying:
    """Retry forever with capped backoff, logging each failure: for effects whose outcome must come."""

    def logged(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("effect failed; trying again", error=repr(error), attempt=state.attempt_number)

    return AsyncRetrying(
        wait=wait_exponential(multiplier=EFFECT_RETRY_MIN_S, max=EFFECT_RETRY_MAX_S),
        retry=retry_if_exception_type(Exception),
        before_sleep=logged,
        reraise=True,
    )


def run_forever(name: str) -> Callable[[Any], None]:
    """A done-callback for tasks that should never end: say so loudly if one does."""

    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            log.error("task ended", task=name, error=repr(task.exception()))

    return done

"""The runtime: applies lifecycle decisions. One consumer of one event queue, so one writer per execution.

Owns the decision loop and the cache of accepted executions. For every event it loads the execution,
asks :func:`agent.core.lifecycle.decide`, commits the new state with its outbox messages in one
transaction (agent/store.py), wakes the publisher (agent/outbox.py), then carries out the side effects
(spawn, signal, publish, timers, probes). Effects report back as new events on the same inbox
(agent/inbox.py). It never speaks MQTT (agent/mqtt.py drains the outbox) nor parses the wire (agent/intake.py
turns documents into events); every collaborator is handed in, and construction does no I/O: :meth:`start`
loads and checks the store, :meth:`run` recovers and decides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from agent import mailbox
from agent.clock import Clock
from agent.control import ControlParsed, generation_of
from agent.core import admission
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
from agent.core.control import NodeControl, on_control
from agent.core.events import (
    DesiredReceived,
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
from agent.core.status import event_document, status_document
from agent.executors.process import ProcessExecutor, Spawned, SpawnError
from agent.inbox import ControlDelivery, Delivery, Inbox
from agent.outbox import Message, Outbox
from agent.probes import Prober
from agent.protocol import OBSERVED_STATES, Topics, dumps
from agent.results.errors import PublishError
from agent.results.publishers import Publishers
from agent.store import Change, Store, StoreError
from agent.tasks import Tasks

log = structlog.get_logger("agent.runtime")
STORE_RETRY_S = 1.0
EFFECT_RETRY_MIN_S = 0.1
EFFECT_RETRY_MAX_S = 5.0
# Events decided together and made durable by one commit, at most: what arrives in a burst (a thousand
# desired documents, their spawns reporting back) shares fsyncs, and the loop still gets a turn between.
GROUP_MAX = 256
WATCH_AFTER_S = 0.01  # a new workload's watch starts this long after its spawn reported (Runtime._spawned)


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` made of one event; observers (metrics) are handed it once it is committed."""

    execution_id: str
    event: Event
    before: Execution | Absent
    after: Execution | Absent
    actions: list[Action]

    @property
    def changes_nothing(self) -> bool:
        return self.after == self.before and not self.actions

    @cached_property
    def rejected_only(self) -> NeverAccepted | None:
        """The compact record kept instead, when the execution is nothing but a rejection: bad documents
        under ever new ids must not grow the agent, so those stay on disk, compactly."""
        return NeverAccepted.of(self.after) if isinstance(self.after, Execution) else None

    @property
    def tells(self) -> list[Tell]:
        return [a for a in self.actions if isinstance(a, Tell)]

    @property
    def answer(self) -> PublishStatus | None:
        """The first status a desired document produced: the desired-to-status latency ends when the broker
        has it (agent/metrics.py), so its outbox row carries the time of this decision."""
        if not isinstance(self.event, DesiredReceived):
            return None
        statuses = (a for a in self.actions if isinstance(a, PublishStatus))
        return next((s for s in statuses if s.execution_id == self.execution_id), None)


class Runtime:
    def __init__(
        self,
        store: Store,
        executor: ProcessExecutor,
        topics: Topics,
        outbox: Outbox,
        publishers: Publishers,
        *,
        clock: Clock,
        inbox: Inbox,
        tasks: Tasks,
        prober: Prober,
        max_executions: int | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.publishers = publishers
        self.topics = topics
        self.outbox = outbox
        self.clock = clock
        self.inbox = inbox
        self.tasks = tasks
        self.prober = prober
        self.max_executions = max_executions  # limits.max_executions (agent/core/admission.py)
        self.control = NodeControl()  # the cordon, as stored (start() loads it)
        self._publishing: dict[str, asyncio.Task[None]] = {}  # a try in flight, by execution
        # Only what was accepted: an execution that is nothing but a rejection lives in the store alone.
        self.executions: dict[str, Execution] = {}
        self._high_water: dict[str, int] = {}  # marks read ahead for the events being applied (apply_all)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.log = log.bind(node=topics.node_id)
        # Called after every committed decision; an observer must be quick and must not raise.
        self.observers: list[Callable[[Decision], None]] = []
        # Called with the type of every node event once it is queued (metrics); the same rules.
        self.node_event_observers: list[Callable[[str], None]] = []

    def start(self) -> None:
        """Load the stored executions, move them to this boot if the machine rebooted, and refuse to go on
        (StoreError) if a live workload is unknown to the store. Nothing is acted on yet (:meth:`run`)."""
        self.executions = self.store.load()
        self.control = self.store.control()
        if self.store.previous_boot is not None:
            moment = self.clock.moment()
            self.executions = {eid: after_reboot(e, moment) for eid, e in self.executions.items()}
            self.store.start_boot(self.executions.values())
            self.log.info("the machine rebooted since the state was stored: old deadlines dropped")
        self._check_no_workload_forgotten()

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
        self.inbox.submit(execution_id, event, mail_seq)

    def submit_control(self, parsed: ControlParsed) -> None:
        """Queue a node control document, in order with the desired documents around it."""
        self.inbox.submit_control(parsed)

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
        for observer in self.node_event_observers:
            observer(event_type)

    def republish(self) -> None:
        """The broker has no session for us, and may have lost our retained statuses with it: queue an exact
        copy of every execution's last status (same revision, same bytes), after whatever waits in the
        outbox, and the node status. An execution not published since the store kept copies (schema 5)
        is republished as its stored state renders."""
        copies = self.store.retained()
        for execution_id, execution in self.executions.items():
            copies.setdefault(self.topics.status(execution_id), dumps(status_document(execution)))
        try:
            self.store.queue(Message(topic, payload, retain=True) for topic, payload in copies.items())
        except StoreError as exc:
            self.log.error("cannot queue the statuses to republish", error=str(exc))
        self.outbox.changed(node_status=True)
        self.log.info(
            "the broker had no session for this agent: republishing every status", statuses=len(copies)
        )

    async def run(self, after: asyncio.Event | None = None) -> None:
        """Decide events for ever, once ``after`` is set if given (queued events wait for it)."""
        if after is not None:
            await after.wait()
        try:
            async with self.tasks.running():
                self._recover()
                while True:
                    self.apply_all(await self.inbox.next_group(GROUP_MAX))
        finally:
            await self.prober.close()
            self.publishers.close()

    # --- the node's control document (cordon) --------------------------------------------------------

    def apply_control(self, parsed: ControlParsed) -> None:
        """Decide a control document (agent/core/control.py), commit it with its event, republish the node
        status. A rejection changes nothing but the record that it was reported."""
        new, reason = on_control(self.control, parsed)
        if new == self.control:
            return
        messages = []
        if reason is not None:
            doc = event_document(
                "control_rejected",
                self.topics.node_id,
                None,
                self.clock.now(),
                generation=generation_of(parsed),
                reason=reason,
            )
            messages.append(Message(self.topics.events, dumps(doc), retain=False))
        try:
            self.store.commit_control(new, messages)
        except StoreError as exc:
            self.log.error("cannot record a control document; retrying", error=str(exc))
            asyncio.get_running_loop().call_later(STORE_RETRY_S, self.submit_control, parsed)
            return
        before, self.control = self.control, new
        if reason is not None:
            self.log.warning("control document rejected", reason=reason)
        else:
            self.log.info(
                "node control", cordoned=new.cordoned, generation=new.generation, was=before.cordoned
            )
        self.outbox.changed(node_status=reason is None)

    # --- one event: decide, commit, act -------------------------------------------------------------

    def apply(self, execution_id: str, event: Event, mail_seq: int | None = None) -> None:
        """Decide ``event``, commit what it changed, then act on it."""
        self.apply_all([Delivery(execution_id, event, mail_seq)])

    def apply_all(self, deliveries: Sequence[Delivery | ControlDelivery]) -> None:
        """Decide each event in order, commit the decisions in one transaction, then act on each in order
        (group commit: one fsync for what arrived together). Effects still follow their commit, and an
        execution met a second time starts a new group: its next event is decided on the state its first
        one committed, so decisions for one execution never interleave. A control document is applied
        between groups, in its place: admission decides on the cordon in force."""
        self._read_high_water(deliveries)
        try:
            self._apply_groups(deliveries)
        finally:
            self._high_water.clear()

    def _apply_groups(self, deliveries: Sequence[Delivery | ControlDelivery]) -> None:
        group: list[tuple[Decision, int | None]] = []
        deciding: set[str] = set()  # the executions decided in ``group``
        for delivery in deliveries:
            if isinstance(delivery, ControlDelivery):
                self._settle(group)
                group, deciding = [], set()
                self.apply_control(delivery.parsed)
                continue
            if delivery.execution_id in deciding:
                self._settle(group)
                group, deciding = [], set()
            decision = self._decide(delivery.execution_id, delivery.event)
            if decision is not None:
                group.append((decision, delivery.mail_seq))
                deciding.add(delivery.execution_id)
        self._settle(group)

    def _read_high_water(self, deliveries: Sequence[Delivery | ControlDelivery]) -> None:
        """The revision high-water marks of the executions these events find unknown, in one query: a
        burst of new desired documents would otherwise ask once each, and each statement hands the GIL to
        the spawning threads and waits to get it back."""
        unknown = {
            d.execution_id
            for d in deliveries
            if isinstance(d, Delivery) and d.execution_id not in self.executions
        }
        if len(unknown) > 1:
            self._high_water.update(self.store.high_waters(unknown))

    def _settle(self, group: list[tuple[Decision, int | None]]) -> None:
        for decision, _ in group:  # committed from here on: its mark is the store's to tell again
            self._high_water.pop(decision.execution_id, None)
        for decision, sent in zip((d for d, _ in group), self._commit(group), strict=True):
            if sent is not None:
                self._act(decision, sent)

    def _current(self, execution_id: str) -> Execution | Absent:
        """The execution as it stands: accepted (cached), a stored rejection, or not known at all."""
        state = self.executions.get(execution_id)
        if state is not None:
            return state
        rejected_only = self.store.never_accepted(execution_id)
        if rejected_only is not None:
            return rejected_only.execution()
        known = self._high_water.get(execution_id)
        return Absent(
            execution_id=execution_id,
            node_id=self.topics.node_id,
            revision=self.store.high_water(execution_id) if known is None else known,
        )

    def _decide(self, execution_id: str, event: Event) -> Decision | None:
        """The decision on ``event``, or None if a rule failed (reported; the state stays as it is)."""
        state = self._current(execution_id)
        if isinstance(state, Execution):
            state = self._sampled(state, event)
        if isinstance(event, DesiredReceived):  # admission needs the whole node as it is now
            event = admission.screen(
                self.executions,
                state,
                event,
                cordoned=self.control.cordoned,
                max_executions=self.max_executions,
            )
        try:
            new, actions = decide(state, event, self.clock.moment())
        except Exception:
            # A bug in a rule must not take every other workload down, nor crash-loop the agent on a
            # retained document that comes back at every start: report it and leave the state as it is.
            self.log.exception(
                "decision failed; event dropped", execution=execution_id, cause=type(event).__name__
            )
            return None
        return Decision(execution_id, event, state, new, actions)

    def _commit(self, group: list[tuple[Decision, int | None]]) -> list[list[int] | None]:
        """Make the decisions durable with their outbox messages and mail, and the mail they answered
        consumed, in one transaction. For each: the sequence numbers of the mail it sent, or None when
        there is nothing to act on (it changed nothing, or none could be recorded and each is tried again)."""
        recorded = [(i, change) for i, (d, seq) in enumerate(group) if (change := self._change(d, seq))]
        try:
            sent = self.store.commit_all([change for _, change in recorded]) if recorded else []
        except StoreError as exc:
            # Nothing was applied: keep the events and try again, rather than act on unrecorded decisions.
            self.log.error("cannot record decisions; retrying", decisions=len(group), error=str(exc))
            loop = asyncio.get_running_loop()
            for decision, mail_seq in group:
                loop.call_later(STORE_RETRY_S, self.submit, decision.execution_id, decision.event, mail_seq)
            return [None] * len(group)
        outcome: list[list[int] | None] = [None] * len(group)
        for (i, change), seqs in zip(recorded, sent, strict=True):
            if change.state is not None:
                outcome[i] = seqs
        return outcome

    def _change(self, decision: Decision, mail_seq: int | None) -> Change | None:
        """What the store must record of ``decision``: nothing, only the mail it answered, or all of it."""
        if decision.changes_nothing:
            return None if mail_seq is None else Change(None, consumed=mail_seq)
        return Change(
            decision.rejected_only or decision.after,
            self._messages(decision),
            [(t.execution_id, mailbox.encode(t.event)) for t in decision.tells],
            consumed=mail_seq,
        )

    def _act(self, decision: Decision, sent: list[int]) -> None:
        """Everything that follows a committed decision, in this order."""
        self._route_mail(decision, sent)
        self._cache(decision)
        self.outbox.changed(node_status=self._transition(decision) is not None)
        self._observe(decision)
        bound = self.log.bind(execution=decision.execution_id, revision=decision.after.revision)
        self._log_transition(decision, bound)
        for action in decision.actions:
            self._carry_out(action, bound)
        self._schedule(decision.execution_id, decision.after)
        self._sync_probe(decision.after)

    def _route_mail(self, decision: Decision, sent: list[int]) -> None:
        """Hand each message to its recipient, with the row that keeps it until it is acted on."""
        for tell, seq in zip(decision.tells, sent, strict=True):
            self.submit(tell.execution_id, tell.event, seq)

    def _cache(self, decision: Decision) -> None:
        new = decision.after
        if isinstance(new, Execution) and decision.rejected_only is None:
            self.executions[decision.execution_id] = new
        else:
            self.executions.pop(decision.execution_id, None)

    @staticmethod
    def _transition(decision: Decision) -> tuple[str | None, str | None] | None:
        """(observed state before, after) if the decision changed it, else None; None for no state."""
        before = decision.before.state_type if isinstance(decision.before, Execution) else None
        after = decision.after.state_type if isinstance(decision.after, Execution) else None
        return None if before == after else (before, after)

    def _observe(self, decision: Decision) -> None:
        for observer in self.observers:
            observer(decision)

    def _log_transition(self, decision: Decision, bound: FilteringBoundLogger) -> None:
        transition = self._transition(decision)
        if transition is not None:
            before, after = transition
            bound.info("transition", cause=type(decision.event).__name__, observed=after, previous=before)

    def _sampled(self, state: Execution, event: Event) -> Execution:
        """``state`` with a fresh usage sample of its workload's cgroup, so whatever the decision
        publishes carries one (a few small reads; nothing without a cgroup)."""
        if isinstance(event, ProcessStarted) and event.usage is not None:
            return state.replace(usage=event.usage)  # sampled by the spawn, off the loop
        ref = event.ref if isinstance(event, ProcessStarted) else state.process
        try:
            usage = None if ref is None else self.executor.usage(ref, self.clock.now())
        except Exception:  # a figure is never worth a decision: decide without a fresh one
            self.log.exception("cannot sample usage", execution=state.execution_id)
            usage = None
        return state if usage is None else state.replace(usage=usage)

    def _sync_probe(self, state: Execution | Absent) -> None:
        try:
            self.prober.sync(state)
        except Exception:
            # Without its probe a run never passes validation: its deadline fails it, so it cannot hang.
            self.log.exception("cannot start or stop a probe", execution=state.execution_id)

    def _messages(self, decision: Decision) -> list[Message]:
        answer = decision.answer
        at = None if answer is None else self.clock.now()
        messages = (self._message(a, at if a is answer else None) for a in decision.actions)
        return [m for m in messages if m is not None]

    def _message(self, action: Action, decided_at: float | None = None) -> Message | None:
        match action:
            case PublishStatus(execution_id=eid, document=document):
                return Message(self.topics.status(eid), dumps(document), retain=True, decided_at=decided_at)
            case ClearStatus(execution_id=eid):
                return Message(self.topics.status(eid), b"", retain=True)
            case EmitEvent(document=document):
                return Message(self.topics.events, dumps(document), retain=False)
        return None

    def _carry_out(self, action: Action, bound: FilteringBoundLogger) -> None:
        match action:
            case Spawn():
                self._spawn(action)
            case Signal(execution_id=eid, ref=ref, signal=name):
                try:
                    delivered = self.executor.signal(ref, name)
                except Exception as exc:
                    # Undelivered is not delivered: the stop waits on the workload's exit, so try again.
                    bound.warning("cannot signal; retrying", signal=name, pid=ref.pid, error=repr(exc))
                    self.tasks.start(self._signal_retrying(eid, ref, name), f"signal:{eid}:{ref.attempt}")
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
                task = self.tasks.start(self._publish(action), f"publish:{eid}:{try_no}")
                self._publishing[eid] = task
                task.add_done_callback(lambda done: self._publish_ended(eid, done))

    def _remove_results(self, job_id: str, execution_id: str, bound: FilteringBoundLogger) -> None:
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

    def _spawn(self, spawn: Spawn) -> None:
        """Hand the spawn to the executor's threads now, and report its outcome from the thread's end
        straight into the inbox. A task awaiting it would start the thread a loop turn later (after the
        publisher's turn) and add a turn on the way back, both on the path to ``validating``."""
        loop = asyncio.get_running_loop()
        try:
            launched = self.executor.launch_soon(spawn.execution_id, spawn.attempt, spawn.spec)
        except Exception as exc:  # a pool shut down, a thread that cannot be started
            self._spawned(spawn, exc)
            return

        def ended(done: Future[Spawned]) -> None:  # in the spawning thread
            if done.cancelled():  # the pool was shut down before it ran: the agent is stopping
                return
            outcome = done.exception() or done.result()
            with contextlib.suppress(RuntimeError):  # the loop has closed: the next start recovers it
                loop.call_soon_threadsafe(self._spawned, spawn, outcome)

        launched.add_done_callback(ended)

    def _spawned(self, spawn: Spawn, outcome: Spawned | BaseException) -> None:
        """Report a spawn's outcome, and watch what it started."""
        eid = spawn.execution_id
        if isinstance(outcome, SpawnError):
            self.submit(eid, SpawnFailed(spawn.attempt, str(outcome)))
            return
        if isinstance(outcome, BaseException):
            # Whatever a spawn raises resolves its attempt: an execution must never wait in `starting`
            # for a report that will not come (the executor's contract says SpawnError, but a thread
            # that cannot be started, say, raises RuntimeError before the executor runs at all).
            self.log.error("spawn failed unexpectedly", execution=eid, exc_info=outcome)
            self.submit(eid, SpawnFailed(spawn.attempt, f"{type(outcome).__name__}: {outcome}"))
            return
        self.submit(eid, ProcessStarted(outcome.ref, outcome.usage))
        # A moment later, after the decision just submitted and the publish it wakes: the watch's first
        # step (tenacity, a pidfd, a reader: a third of a millisecond) is then not on the way to
        # `validating`, and an exit meanwhile is seen all the same (the supervisor is our child, so its
        # pid stays ours until it is reaped).
        asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start_watch, eid, outcome.ref)

    def _start_watch(self, execution_id: str, ref: ProcessRef) -> None:
        if self.tasks.accepting:  # else the agent is stopping: the next start re-adopts the workload
            self.tasks.start(self._watch(execution_id, ref), f"watch:{execution_id}:{ref.attempt}")

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
            self.tasks.start(self._watch(execution_id, ref), f"watch:{execution_id}:{ref.attempt}")
        # Cgroups of attempts no one accounts for (the agent died between creating one and recording its
        # spawn, or after a workload ended and before its cgroup was removed): nothing in them may run on.
        for cgroup in self.executor.orphan_cgroups(known):
            self.log.warning(
                "killing and removing an attempt's cgroup nobody accounts for", cgroup=str(cgroup)
            )
            self.tasks.start(self.executor.discard(cgroup), f"discard:{cgroup.name}")


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

"""The durable store: execution state, revision high-water marks and the outbox, in one SQLite file.

SQLite in WAL mode with ``synchronous=FULL`` makes every commit durable (fsync of the WAL) before it
returns, and a torn last write is rolled back on open, never half-applied. State, high-water mark and
the outbox rows that publish a change are written in a single transaction, so a revision is never
published without being stored, nor stored without being queued for publishing (docs/design.md).

Owns the state file. It decides nothing and speaks no MQTT: the runtime tells it what to record, the
publisher reads the outbox rows through :class:`agent.outbox.Rows`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from agent import __version__, schema
from agent.boot import boot_id, boot_time
from agent.core.control import NodeControl
from agent.core.model import Absent, Execution, NeverAccepted
from agent.outbox import Message, Queued

log = structlog.get_logger("agent.store")
CONTROL_KEY = "control"
# Decision times kept beside outbox rows at once (agent/outbox.py Message.decided_at): past it the oldest
# are dropped and their statuses go unmeasured, so a long broker outage cannot grow the agent unbounded.
MAX_STAMPS = 10_000
ACK_DELETE_ROWS = 256  # acknowledged outbox rows deleted together through a burst (Store.acknowledge)
HIGH_WATER_BATCH = 500  # ids per query: under SQLite's 999 bound parameters of its older builds


class StoreError(Exception):
    """The state directory cannot be used; the message names the file and what is wrong."""


def _lock(path: Path) -> int:
    """Hold an exclusive lock for the life of the process: two agents on one state would fight."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path}: another agent is already running with this state directory") from None
    return fd


@dataclass(frozen=True)
class Change:
    """One decision as the store records it: the execution's new state (None when it changed nothing but
    answered mail), its outbox messages, its mail to other executions, and the mail it answered."""

    state: Execution | NeverAccepted | Absent | None
    messages: Sequence[Message] = ()
    mail: Sequence[tuple[str, str]] = ()
    consumed: int | None = None


class Store:
    """Write-through store of the runtime's state. Not thread-safe: one owner, the event loop thread."""

    def __init__(self, path: Path, node_id: str) -> None:
        self.path = path
        self._acknowledged = 0  # outbox rows up to here are published, even if their delete failed
        # Decision times of outbox rows by seq, in seq order, kept in memory (Message.decided_at says why);
        # those queued in the open transaction wait in _stamping until it commits, as a rolled-back seq
        # is given again to the next row.
        self._stamps: dict[int, float] = {}
        self._stamping: list[tuple[int, float]] = []
        self._deleted = 0  # outbox rows up to here are deleted
        self._never_accepted_added = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(path.with_suffix(".lock"))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            os.close(self._lock)
            raise StoreError(f"{path}: cannot open the state database ({exc})") from exc
        try:
            self._open(node_id)
        except BaseException:
            self.close()  # the lock too: whoever could not open the state must not keep others out of it
            raise

    def _open(self, node_id: str) -> None:
        path = self.path
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(
                    f"{path}: the state database is damaged ({check}); restore it or move it away"
                )
            self._migrate()
            self._claim(node_id)
            # Counted once here and kept up to date by commit(): the node status counts them as `failed`
            # on every publish, and a count(*) of a flood's worth of rows each time would cost a core.
            self.never_accepted_count = int(
                self._db.execute("SELECT count(*) FROM never_accepted").fetchone()[0]
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path}: cannot open the state database ({exc}). If {path.name}-wal or {path.name}-shm was "
                "removed or damaged, restore them with the database; never start from a partial copy."
            ) from exc

    def _migrate(self) -> None:
        """Bring the schema up to this agent's version, all steps in one transaction (agent/schema.py)."""
        at = schema.Moment(wall=time.time(), boot=boot_time(), boot_id=boot_id())
        with self._transaction():
            found = schema.version_of(self._db)
            if found > schema.VERSION:
                raise StoreError(
                    f"{self.path}: this state was written by a newer agent (state schema version {found}); "
                    f"this agent ({__version__}) reads schema versions up to {schema.VERSION}. Run the newer "
                    "agent again, or restore the copy of the state directory made before it (docs/upgrade.md)."
                )
            try:
                done = schema.migrate(self._db, at)
            except Exception as exc:  # whatever stops a step (a full disk, a stored JSON it cannot read)
                raise StoreError(
                    f"{self.path}: cannot migrate the state from schema version {found} to {schema.VERSION} "
                    f"({exc}); nothing was changed"
                ) from exc
        for version, what in done:
            log.info("state schema migrated", path=str(self.path), version=version, step=what)
        self.boot_id = at.boot_id
        self.previous_boot = self._meta("boot_id") if self._meta("boot_id") != at.boot_id else None
        self.instance_id = self._meta("instance_id") or ""

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _claim(self, node_id: str) -> None:
        """A state directory belongs to one node: mixing two nodes' revisions would break both."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
        if row is None:
            with self._transaction():
                self._db.execute("INSERT INTO meta (key, value) VALUES ('node_id', ?)", (node_id,))
        elif row[0] != node_id:
            raise StoreError(f"{self.path}: this state belongs to node {row[0]!r}, not {node_id!r}")

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        self._never_accepted_added = 0  # rows added in this transaction (never_accepted_count: before it)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            stamping, self._stamping = self._stamping, []
        self._db.execute("COMMIT")
        self._stamps.update(stamping)
        while len(self._stamps) > MAX_STAMPS:
            del self._stamps[next(iter(self._stamps))]

    def load(self) -> dict[str, Execution]:
        """Every execution the agent accepted; the never-accepted stay on disk (:meth:`never_accepted`).

        A never-accepted execution stored whole, as agents before the never_accepted table did, is moved
        there on the way.
        """
        executions = {}
        moved = []
        for execution_id, text in self._db.execute("SELECT execution_id, state FROM executions"):
            try:
                execution = Execution.model_validate_json(text)
            except ValidationError as exc:
                raise StoreError(
                    f"{self.path}: stored state of {execution_id!r} is unreadable: {exc}"
                ) from exc
            record = NeverAccepted.of(execution)
            if record is None:
                executions[execution_id] = execution
            else:
                moved.append(record)
        if moved:
            try:
                with self._transaction():
                    added = sum(self._put(record) for record in moved)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: cannot move never-accepted executions: {exc}") from exc
            self.never_accepted_count += added
        return executions

    def never_accepted(self, execution_id: str) -> NeverAccepted | None:
        if not self.never_accepted_count:
            return None  # asked for every new execution: an empty table needs no query
        row = self._db.execute(
            "SELECT state FROM never_accepted WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            return None
        try:
            return NeverAccepted.model_validate_json(row[0])
        except ValidationError as exc:
            raise StoreError(f"{self.path}: stored state of {execution_id!r} is unreadable: {exc}") from exc

    def start_boot(self, executions: Iterable[Execution]) -> None:
        """Record that the state now belongs to this boot, with its executions as they are after a reboot."""
        try:
            with self._transaction():
                for state in executions:
                    self._db.execute(
                        "UPDATE executions SET state = ? WHERE execution_id = ?",
                        (state.model_dump_json(), state.execution_id),
                    )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'boot_id'", (self.boot_id,))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot record the new boot: {exc}") from exc
        self.previous_boot = None

    def high_water(self, execution_id: str) -> int:
        """The highest revision ever published for ``execution_id`` (0 if none), deletions included."""
        return self.high_waters([execution_id])[execution_id]

    def high_waters(self, execution_ids: Iterable[str]) -> dict[str, int]:
        """:meth:`high_water` of each of ``execution_ids``, in as few queries as the statement limit allows."""
        ids = list(execution_ids)
        found = dict.fromkeys(ids, 0)
        for start in range(0, len(ids), HIGH_WATER_BATCH):
            batch = ids[start : start + HIGH_WATER_BATCH]
            marks = ",".join("?" * len(batch))
            query = f"SELECT execution_id, revision FROM revisions WHERE execution_id IN ({marks})"
            for execution_id, revision in self._db.execute(query, batch):
                found[str(execution_id)] = int(revision)
        return found

    def commit(
        self,
        state: Execution | NeverAccepted | Absent,
        messages: Iterable[Message] = (),
        mail: Iterable[tuple[str, str]] = (),
        consumed: int | None = None,
    ) -> list[int]:
        """Store the new state of one execution and queue its messages, atomically and durably.

        ``mail`` is (recipient, encoded event) for other executions, returned as their sequence numbers;
        ``consumed`` is the mail this decision answered, deleted in the same transaction, so a message
        between executions is acted on exactly once whatever crashes.
        """
        return self.commit_all([Change(state, tuple(messages), tuple(mail), consumed)])[0]

    def commit_all(self, changes: Sequence[Change]) -> list[list[int]]:
        """Commit several decisions in one transaction, so one fsync makes them all durable (group
        commit): all of them or, on an error, none. The sequence numbers of each one's mail, in order."""
        try:
            with self._transaction():
                sent = [self._apply(change) for change in changes]
        except sqlite3.DatabaseError as exc:
            names = ", ".join(repr(c.state.execution_id) for c in changes[:3] if c.state is not None)
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise StoreError(
                f"{self.path}: cannot record {names or 'a consumed message'}{more}: {exc}"
            ) from exc
        self.never_accepted_count += sum(added for _, added in sent)  # only once the transaction holds
        return [seqs for seqs, _ in sent]

    def _apply(self, change: Change) -> tuple[list[int], int]:
        """One decision inside the transaction: its mail's sequence numbers, and the change in the number
        of never-accepted executions."""
        if change.consumed is not None:
            self._db.execute("DELETE FROM mail WHERE seq = ?", (change.consumed,))
        state = change.state
        if state is None:
            return [], 0
        sent = [
            int(
                self._db.execute(
                    "INSERT INTO mail (execution_id, event) VALUES (?, ?)", (recipient, event)
                ).lastrowid
                or 0
            )
            for recipient, event in change.mail
        ]
        rejected_only = self._put(state)
        self._db.execute(
            "INSERT INTO revisions (execution_id, revision) VALUES (?, ?) "
            "ON CONFLICT (execution_id) DO UPDATE SET revision = max(revision, excluded.revision)",
            (state.execution_id, state.revision),
        )
        self.enqueue(change.messages)
        return sent, rejected_only

    def _put(self, state: Execution | NeverAccepted | Absent) -> int:
        """Keep ``state`` in its table and in no other (inside a transaction); the change in the number
        of never-accepted executions (-1, 0 or 1). As few statements as it takes: each one hands the GIL
        to the spawning threads and waits to get it back (a burst's decisions commit on the loop's thread)."""
        execution_id = state.execution_id
        if isinstance(state, Execution):
            self._db.execute(
                "INSERT INTO executions (execution_id, state) VALUES (?, ?) "
                "ON CONFLICT (execution_id) DO UPDATE SET state = excluded.state",
                (execution_id, state.model_dump_json()),
            )
        else:
            self._db.execute("DELETE FROM executions WHERE execution_id = ?", (execution_id,))
        if not isinstance(state, NeverAccepted) and not self._may_hold_never_accepted():
            return 0  # the table is empty: nothing of this execution to remove from it
        removed = self._db.execute("DELETE FROM never_accepted WHERE execution_id = ?", (execution_id,))
        if not isinstance(state, NeverAccepted):
            return -removed.rowcount
        self._db.execute(
            "INSERT INTO never_accepted (execution_id, state) VALUES (?, ?)",
            (execution_id, state.model_dump_json()),
        )
        self._never_accepted_added += 1
        return 1 - removed.rowcount

    def _may_hold_never_accepted(self) -> bool:
        """Whether the never_accepted table may have rows now, inside the open transaction."""
        return self.never_accepted_count > 0 or self._never_accepted_added > 0

    def control(self) -> NodeControl:
        """The node's control state (cordon): a ``control`` row of ``meta``, absent before the first
        control document (docs/upgrade.md: a row, not a schema change, so an older agent still reads the
        state)."""
        text = self._meta(CONTROL_KEY)
        if text is None:
            return NodeControl()
        try:
            return NodeControl.model_validate_json(text)
        except ValidationError as exc:
            raise StoreError(f"{self.path}: the stored node control is unreadable: {exc}") from exc

    def commit_control(self, control: NodeControl, messages: Iterable[Message] = ()) -> None:
        """Store the node's control state and queue its messages (a ``control_rejected`` event), atomically."""
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (CONTROL_KEY, control.model_dump_json()),
                )
                self.enqueue(messages)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot record the node control: {exc}") from exc

    def mail(self) -> list[tuple[int, str, str]]:
        """Every message between executions not yet acted on: (seq, recipient, encoded event), in order."""
        rows = self._db.execute("SELECT seq, execution_id, event FROM mail ORDER BY seq")
        return [(int(seq), str(recipient), str(event)) for seq, recipient, event in rows]

    def consume(self, seq: int) -> None:
        """A message that changed nothing: forget it."""
        try:
            with self._transaction():
                self._db.execute("DELETE FROM mail WHERE seq = ?", (seq,))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot consume message {seq}: {exc}") from exc

    def enqueue(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` inside the open transaction. One insert each, not executemany: a stamped
        message needs its seq, which only a single insert tells."""
        messages = list(messages)
        for m in messages:
            cursor = self._db.execute(
                "INSERT INTO outbox (topic, payload, retain) VALUES (?, ?, ?)",
                (m.topic, m.payload, int(m.retain)),
            )
            if m.decided_at is not None and cursor.lastrowid is not None:
                self._stamping.append((cursor.lastrowid, m.decided_at))
        # The copy to republish when the broker has lost it; an empty retained payload clears the topic.
        kept = [m for m in messages if m.retain and m.payload]
        cleared = [m for m in messages if m.retain and not m.payload]
        if kept:
            self._db.executemany(
                "INSERT INTO retained (topic, payload) VALUES (?, ?) "
                "ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload",
                ((m.topic, m.payload) for m in kept),
            )
        if cleared:
            self._db.executemany("DELETE FROM retained WHERE topic = ?", ((m.topic,) for m in cleared))

    def retained(self) -> dict[str, bytes]:
        """The last retained payload queued per topic (cleared topics have none): what the broker should hold."""
        rows = self._db.execute("SELECT topic, payload FROM retained ORDER BY topic")
        return {str(topic): bytes(payload) for topic, payload in rows}

    def queue(self, messages: Iterable[Message]) -> None:
        """Queue messages outside a decision (events of the node itself, copies to republish)."""
        try:
            with self._transaction():
                self.enqueue(messages)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot queue messages: {exc}") from exc

    def queue_once(self, key: str, messages: Iterable[Message]) -> bool:
        """Queue messages unless ``key`` was queued before, ever; False if it was."""
        try:
            with self._transaction():
                cursor = self._db.execute("INSERT OR IGNORE INTO reported (key) VALUES (?)", (key,))
                if cursor.rowcount == 0:
                    return False
                self.enqueue(messages)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot queue messages: {exc}") from exc
        return True

    def pending(self, limit: int, after: int | None = None) -> list[Queued]:
        """Up to ``limit`` queued messages in order, past the acknowledged ones and past ``after`` (what
        the publisher has sent already and awaits the acknowledgement of)."""
        start = self._acknowledged if after is None else max(after, self._acknowledged)
        rows = self._db.execute(
            "SELECT seq, topic, payload, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (start, limit),
        )
        return [
            Queued(seq, Message(topic, bytes(payload), bool(retain), self._stamps.get(seq)))
            for seq, topic, payload, retain in rows
        ]

    def acknowledge(self, upto_seq: int, *, now: bool = True) -> None:
        """Forget every queued message up to and including ``upto_seq``: the broker has them. Without
        ``now`` the rows are skipped from memory at once and deleted with a later acknowledgement (at
        least every ACK_DELETE_ROWS rows): a burst's rows land one PUBACK at a time, and a delete each
        would be a write of its own each."""
        self._acknowledged = max(self._acknowledged, upto_seq)
        while self._stamps and next(iter(self._stamps)) <= self._acknowledged:
            del self._stamps[next(iter(self._stamps))]
        if not now and self._acknowledged - self._deleted < ACK_DELETE_ROWS:
            return
        if self._acknowledged <= self._deleted:
            return  # nothing acknowledged since the last delete: no write
        # A full disk can refuse even a delete. The rows stay, skipped from memory, and are deleted with the
        # next acknowledgement; only a crash meanwhile republishes them, as exact copies.
        # Not fsync'd (synchronous=NORMAL for this one commit): losing it only republishes exact copies, and
        # the next FULL commit makes it durable anyway, as the WAL is written in order.
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("DELETE FROM outbox WHERE seq <= ?", (self._acknowledged,))
                self._deleted = self._acknowledged
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def depth(self) -> int:
        query = "SELECT count(*) FROM outbox WHERE seq > ?"
        return int(self._db.execute(query, (self._acknowledged,)).fetchone()[0])

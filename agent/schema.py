"""The store's schema and its numbered migrations, from an empty file (version 0) to :data:`VERSION`.

The version is ``schema_version`` in the ``meta`` table. A database of the agent before versioning has
no such row and reads as version 0: migration 1 (today's tables, ``CREATE ... IF NOT EXISTS``) is then a
no-op. Each later migration is one small step for one change, written against the stored JSON as it was
then (never through today's models). The store runs all pending ones in one transaction at start and
logs each; a database of a newer agent is refused. Fixtures of every version are under tests/fixtures/.
Adding one: append a function here, bump nothing else, make the fixture (tests/fixtures/make_fixture.py).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Moment:
    """When the migrations run, on both clocks, and on which boot: what converting a time needs."""

    wall: float
    boot: float
    boot_id: str


def _tables(db: sqlite3.Connection, at: Moment) -> None:
    """Version 1: the tables as they were before the schema had a version."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS executions (execution_id TEXT PRIMARY KEY, state TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS revisions (execution_id TEXT PRIMARY KEY, revision INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS reported (key TEXT PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS mail (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "execution_id TEXT NOT NULL, event TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL)",
    ):
        db.execute(statement)


def _deadlines_on_the_boot_clock(db: sqlite3.Connection, at: Moment) -> None:
    """Version 2: ``timers`` (wall-clock deadlines) become ``deadlines`` (seconds since boot).

    A wall-clock deadline is converted with the clocks' offset of this moment, which is what it meant to
    the agent that wrote it; the new name makes an older agent refuse this state instead of misreading it.
    """
    offset = at.wall - at.boot
    rows = db.execute("SELECT execution_id, state FROM executions").fetchall()
    for execution_id, text in rows:
        state = json.loads(text)
        timers = state.pop("timers", {})
        state["deadlines"] = {name: deadline - offset for name, deadline in timers.items()}
        if "timeout" in timers:  # what was published as details.timeout_at, kept as published (wall clock)
            state["timeout_at"] = timers["timeout"]
        db.execute(
            "UPDATE executions SET state = ? WHERE execution_id = ?", (json.dumps(state), execution_id)
        )
    _set(db, "boot_id", at.boot_id)


def _instance_id(db: sqlite3.Connection, at: Moment) -> None:
    """Version 3: the id of this agent instance, made once with its state (docs/protocol.md)."""
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?)", (uuid.uuid4().hex,))


def _never_accepted_table(db: sqlite3.Connection, at: Moment) -> None:
    """Version 4: executions that are nothing but rejections get a small table of their own.

    Their whole rows of earlier versions are moved there by the store as it loads them (Store.load).
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS never_accepted (execution_id TEXT PRIMARY KEY, state TEXT NOT NULL)"
    )


def _retained_table(db: sqlite3.Connection, at: Moment) -> None:
    """Version 5: the last retained payload queued per topic, to republish exact copies.

    A broker that lost the agent's session may have lost its retained messages too (docs/protocol.md,
    "A broker without our session"). Rows come as statuses are queued; an execution with no row yet
    (not published since the upgrade) is republished as its stored state renders.
    """
    db.execute("CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection, Moment], None], ...] = (
    _tables,
    _deadlines_on_the_boot_clock,
    _instance_id,
    _never_accepted_table,
    _retained_table,
)
VERSION = len(MIGRATIONS)


def _set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def version_of(db: sqlite3.Connection) -> int:
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if has_meta is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, at: Moment, upto: int = VERSION) -> list[tuple[int, str]]:
    """Run the migrations after the database's version, inside the caller's transaction.

    Returns (version, what) for each one run, for the log.
    """
    done = []
    for version in range(version_of(db) + 1, upto + 1):
        step = MIGRATIONS[version - 1]
        step(db, at)
        _set(db, "schema_version", str(version))
        done.append((version, (step.__doc__ or step.__name__).splitlines()[0]))
    return done

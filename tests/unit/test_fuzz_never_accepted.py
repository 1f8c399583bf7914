"""Executions that are nothing but rejections: kept in the store only, compactly, and still exact.

A flood of bad documents under new execution ids (bench/fuzz.py) must not grow the agent. The runtime
keeps such an execution as a :class:`NeverAccepted` row and no Execution in memory; the status it
publishes, the revisions, a later valid document, a redelivery after a restart and a deletion all
behave as when the whole Execution was kept. Real SQLite store in a temporary directory; no broker.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings

from agent.core.clock import Now
from agent.core.events import DesiredRejected
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, NeverAccepted
from agent.core.status import status_document
from agent.executors.cgroups import Containment
from agent.executors.process import ProcessExecutor
from agent.intake import to_event
from agent.protocol import Accepted, Rejected, Topics, parse_desired
from agent.results.publishers import Publishers
from agent.store import Store
from tests.support import fuzz
from tests.support.runtime import standalone_runtime

NODE = "node-1"
T0 = 1_800_000_000.0
AT = Now(T0, T0)
MAX_BYTES = 262_144

NO_CGROUPS = Containment(kind="process-group", reason="a unit test makes no cgroups")


def bad(execution_id: str, generation: int = 1, command: object = None) -> bytes:
    document = {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": "running"},
        "spec": {"command": command if command is not None else []},
    }
    return json.dumps(document).encode()


def pending(execution_id: str, generation: int = 1) -> bytes:
    document = {
        "execution_id": execution_id,
        "generation": generation,
        "desired_state": {"state_type": "pending"},
        "spec": {"command": ["sleep", "1"]},
    }
    return json.dumps(document).encode()


# --- The record --------------------------------------------------------------------------------------------


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(fuzz.desired_payloads("x-1"))
def test_a_rejection_from_nothing_is_kept_exactly_and_nothing_accepted_is(payload: bytes) -> None:
    parsed = parse_desired("x-1", payload, MAX_BYTES)
    after, _ = decide(Absent(execution_id="x-1", node_id=NODE, revision=7), to_event(parsed), AT)
    if not isinstance(after, Execution):
        return  # deleted: nothing to keep
    record = NeverAccepted.of(after)
    if isinstance(parsed, Rejected):
        assert record is not None
        assert record.execution() == after
        assert NeverAccepted.model_validate_json(record.model_dump_json()) == record
    else:
        assert isinstance(parsed, Accepted)
        assert record is None


def test_an_execution_with_anything_more_than_its_rejection_is_not_compacted() -> None:
    rejected, _ = decide(
        Absent(execution_id="p", node_id=NODE), DesiredRejected(None, "payload is not JSON", "d"), AT
    )
    assert isinstance(rejected, Execution)
    assert NeverAccepted.of(rejected) is not None
    for change in (
        {"next_execution_id": "n"},
        {"restart_count": 1},
        {"details": {**rejected.details, "x": 1}},
    ):
        assert NeverAccepted.of(rejected.model_copy(update=change)) is None, change


# --- The store ---------------------------------------------------------------------------------------------


def test_an_old_whole_never_accepted_row_still_loads_and_is_moved(tmp_path: Path) -> None:
    """Agents before the never_accepted table stored a rejection-only execution whole, in executions."""
    path = tmp_path / "agent.db"
    store = Store(path, NODE)
    old, _ = decide(
        Absent(execution_id="old", node_id=NODE, revision=4),
        to_event(parse_desired("old", bad("old"), MAX_BYTES)),
        AT,
    )
    assert isinstance(old, Execution)
    store.close()
    with sqlite3.connect(path) as db:  # written as the old agent did: the whole model, in executions
        db.execute(
            "INSERT INTO executions (execution_id, state) VALUES (?, ?)", ("old", old.model_dump_json())
        )
        db.execute("INSERT INTO revisions (execution_id, revision) VALUES (?, ?)", ("old", old.revision))
    store = Store(path, NODE)
    assert store.load() == {}
    record = store.never_accepted("old")
    assert record is not None
    assert record.execution() == old
    assert store.high_water("old") == old.revision == 5
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM executions").fetchone() == (0,)
    store = Store(path, NODE)  # and once moved, it stays where it is
    assert store.load() == {}
    assert store.never_accepted("old") == record
    store.close()


# --- The runtime -------------------------------------------------------------------------------------------


class Node:
    """A real runtime on a real store, fed payloads as the daemon turns them into events."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.store = Store(state_dir / "agent.db", NODE)
        self.runtime = standalone_runtime(
            self.store,
            ProcessExecutor(state_dir, NO_CGROUPS),
            Topics("reconcile/v1", NODE),
            Publishers.local_only(state_dir / "results"),
        )
        self.seen = 0

    def send(self, execution_id: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Apply one payload; the messages it queued, in order."""
        self.runtime.apply(execution_id, to_event(parse_desired(execution_id, payload, MAX_BYTES)))
        queued = self.store.pending(10_000)
        new = [(q.message.topic, q.message.payload) for q in queued[self.seen :]]
        self.seen = len(queued)
        return new

    def statuses(self, messages: list[tuple[str, bytes]]) -> list[dict[str, Any] | None]:
        return [
            json.loads(p) if p else None for t, p in messages if t.endswith("/status") and "/executions/" in t
        ]

    def close(self) -> None:
        self.store.close()


async def test_a_flood_of_rejections_for_new_ids_holds_nothing_in_memory(tmp_path: Path) -> None:
    node = Node(tmp_path)
    for i in range(200):
        statuses = node.statuses(node.send(f"x{i}", bad(f"x{i}")))
        assert [s["observed_state"]["state_type"] for s in statuses if s] == ["failed"]
    assert node.runtime.executions == {}
    assert node.store.never_accepted("x199") is not None
    node.close()


async def test_a_never_accepted_execution_behaves_as_if_kept_whole(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (first,) = node.statuses(node.send("x", bad("x", 3)))
    assert first is not None
    assert first["revision"] == 1
    assert first["observed_generation"] == 0
    assert first["observed_state"]["state_type"] == "failed"
    assert first["details"]["rejected"]["generation"] == 3
    # The record renders exactly what was published from the core's whole Execution.
    record = node.store.never_accepted("x")
    assert record is not None
    assert status_document(record.execution()) == first
    assert node.send("x", bad("x", 3)) == [], "the same payload again is not reported again"
    (second,) = node.statuses(node.send("x", bad("x", 4, "sleep 1")))
    assert second is not None
    assert second["revision"] == 2
    assert second["details"]["rejected"]["generation"] == 4
    assert second["created_at"] == first["created_at"]
    # A valid document is accepted as ever: revisions continue, it is held from now on.
    (accepted,) = node.statuses(node.send("x", pending("x", 1)))
    assert accepted is not None
    assert accepted["revision"] == 3
    assert accepted["observed_state"]["state_type"] == "pending"
    assert "rejected" not in accepted["details"]
    assert "x" in node.runtime.executions
    assert node.store.never_accepted("x") is None
    node.close()


async def test_after_a_restart_a_redelivered_rejection_is_not_reported_again(tmp_path: Path) -> None:
    node = Node(tmp_path)
    assert node.send("x", bad("x")) != []
    node.close()
    node = Node(tmp_path)
    node.seen = len(node.store.pending(10_000))
    assert node.send("x", bad("x")) == []
    assert node.runtime.executions == {}
    node.close()


async def test_deleting_a_never_accepted_execution_clears_its_status_and_keeps_its_revision(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    node.send("x", bad("x"))
    node.send("x", bad("x", 2))
    assert node.send("x", b"") == [("reconcile/v1/nodes/node-1/executions/x/status", b"")]
    assert node.store.never_accepted("x") is None
    assert node.store.high_water("x") == 2
    (again,) = node.statuses(node.send("x", bad("x")))
    assert again is not None
    assert again["revision"] == 3
    node.close()


async def test_the_node_status_counts_never_accepted_executions_as_failed(tmp_path: Path) -> None:
    """Their statuses say `failed`, so the node's counts do, across a restart, an acceptance, a deletion."""
    node = Node(tmp_path)
    for name in ("x", "y", "z"):
        node.send(name, bad(name))
    node.send("x", bad("x", 2))  # the same one again: still one
    assert node.runtime.counts() == {"failed": 3}
    node.close()
    node = Node(tmp_path)
    assert node.runtime.counts() == {"failed": 3}
    node.send("y", pending("y"))  # accepted now: counted with the accepted
    node.send("z", b"")  # deleted
    assert node.runtime.counts() == {"pending": 1, "failed": 1}
    node.close()

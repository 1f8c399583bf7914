"""A group of events reads the revision marks of the executions it finds unknown in one query
(Runtime._read_high_water); a revision still never repeats when an execution is created, deleted and
created again inside one group, or was deleted before it. Real SQLite store, no broker, no processes
(desired `pending` spawns nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.executors.cgroups import Containment
from agent.executors.process import ProcessExecutor
from agent.inbox import Delivery
from agent.intake import to_event
from agent.protocol import Topics, parse_desired
from agent.results.publishers import Publishers
from agent.store import Store
from tests.support.agent import desired
from tests.support.runtime import standalone_runtime

NODE = "node-1"
NO_CGROUPS = Containment(kind="process-group", reason="a unit test makes no cgroups")


def pending(execution_id: str) -> bytes:
    return json.dumps(desired(execution_id, state="pending", command=["sleep", "1"])).encode()


def delivery(execution_id: str, payload: bytes) -> Delivery:
    return Delivery(execution_id, to_event(parse_desired(execution_id, payload, 262_144)))


def revisions(store: Store, execution_id: str) -> list[int]:
    """The revisions queued for ``execution_id``'s status topic, in order (a deletion queues an empty one)."""
    topic = Topics("reconcile/v1", NODE).status(execution_id)
    found = []
    for queued in store.pending(10_000):
        if queued.message.topic == topic and queued.message.payload:
            found.append(int(json.loads(queued.message.payload)["revision"]))
    return found


async def test_created_deleted_and_created_again_in_one_group_never_repeats_a_revision(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.db", NODE)
    runtime = standalone_runtime(
        store,
        ProcessExecutor(tmp_path, NO_CGROUPS),
        Topics("reconcile/v1", NODE),
        Publishers.local_only(tmp_path / "results"),
    )
    runtime.apply_all([delivery("x", pending("x")), delivery("x", b"")])  # made, then deleted, before
    before = revisions(store, "x")
    assert before
    assert "x" not in runtime.executions

    runtime.apply_all(
        [
            delivery("x", pending("x")),  # known to the store only by its mark
            delivery("y", pending("y")),  # so the group reads two marks at once
            delivery("x", b""),
            delivery("x", pending("x")),  # after a deletion inside the group: the store's mark again
        ]
    )
    seen = revisions(store, "x")
    assert seen == sorted(set(seen)), seen  # each revision once, in order
    assert seen[: len(before)] == before
    assert min(seen[len(before) :]) > max(before)
    assert "x" in runtime.executions
    assert "y" in runtime.executions
    assert store.high_waters(["x", "y", "never"]) == {
        "x": runtime.executions["x"].revision,
        "y": runtime.executions["y"].revision,
        "never": 0,
    }
    store.close()

"""The decision time an outbox row carries (Message.decided_at): kept beside the row in memory by the
store, handed to the publisher with it, forgotten once the broker has it; never given to another row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import store as store_module
from agent.outbox import Message
from agent.store import Store, StoreError


def stamped(topic: str, at: float | None) -> Message:
    return Message(topic, b"{}", retain=True, decided_at=at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "agent.db", "node-1")
    yield opened
    opened.close()


def test_a_stamp_travels_with_its_row_until_acknowledged(store: Store) -> None:
    store.queue([stamped("a", 12.5), stamped("b", None)])
    rows = store.pending(10)
    assert [(r.message.topic, r.message.decided_at) for r in rows] == [("a", 12.5), ("b", None)]
    assert rows[0].message == stamped("a", None)  # not part of what the message is on the wire
    store.acknowledge(rows[0].seq)
    store.queue([stamped("c", None)])
    assert [(r.message.topic, r.message.decided_at) for r in store.pending(10)] == [("b", None), ("c", None)]


def test_a_rolled_back_row_leaves_no_stamp_for_the_next_one(store: Store) -> None:
    # A row the database refuses rolls the whole transaction back, and its seq is given again.
    store._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.topic = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(StoreError):
        store.queue([stamped("a", 1.0), stamped("refused", None)])
    store.queue([stamped("b", None)])
    (row,) = store.pending(10)
    assert row.seq == 1  # the seq the refused transaction had used
    assert (row.message.topic, row.message.decided_at) == ("b", None)


def test_stamps_are_bounded_oldest_dropped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_STAMPS", 2)
    store.queue([stamped("a", 1.0), stamped("b", 2.0), stamped("c", 3.0)])
    assert [r.message.decided_at for r in store.pending(10)] == [None, 2.0, 3.0]

"""The publisher's sliding window (agent/window.py): landed in the order sent, only as a whole prefix,
and one deadline, the oldest flight's, for all of them."""

from __future__ import annotations

import asyncio

from agent.outbox import Message
from agent.window import Acknowledgement, Window


def message(n: int) -> Message:
    return Message(f"t/{n}", b"x", retain=True)


async def test_a_later_acknowledgement_lands_only_with_every_earlier_one() -> None:
    wake = asyncio.Event()
    acks = [Acknowledgement(wake) for _ in range(3)]
    window = Window(3, timeout_s=10.0)
    for seq, ack in enumerate(acks, start=1):
        window.send(seq, message(seq), ack, now=100.0)
    window.send(None, message(0), Acknowledgement(wake), now=101.0)  # past the size: no room
    assert window.room == -1
    assert window.last_seq == 3

    acks[1].set()
    assert wake.is_set()  # an acknowledgement wakes the publisher
    assert window.landed() == (None, [])  # row 2 waits for row 1

    acks[0].set()
    assert window.landed() == (2, [message(1), message(2)])
    assert window.room == 1

    acks[2].set()
    assert window.landed() == (3, [message(3)])
    assert not window.empty  # the node status, never acknowledged here
    assert window.unsequenced == 1  # so no second one goes past the full window (agent/mqtt.py)


async def test_the_deadline_is_the_oldest_unacknowledged_flights() -> None:
    wake = asyncio.Event()
    first, second = Acknowledgement(wake), Acknowledgement(wake)
    window = Window(4, timeout_s=10.0)
    assert window.deadline is None  # nothing in flight: nothing to time out
    window.send(1, message(1), first, now=100.0)
    window.send(2, message(2), second, now=105.0)
    assert window.deadline == 110.0
    second.set()
    assert window.landed() == (None, [])
    assert window.deadline == 110.0  # the later one is acknowledged, the first still counts
    first.set()
    assert window.landed() == (2, [message(1), message(2)])
    assert window.deadline is None

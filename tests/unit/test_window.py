"""The publisher's sliding window (agent/window.py): landed in the order sent, only as a whole prefix."""

from __future__ import annotations

import asyncio

import pytest

from agent.outbox import Message
from agent.window import Window


def message(n: int) -> Message:
    return Message(f"t/{n}", b"x", retain=True)


async def acknowledged(future: asyncio.Future[None]) -> None:
    await future


async def test_a_later_acknowledgement_lands_only_with_every_earlier_one() -> None:
    loop = asyncio.get_running_loop()
    acks = [loop.create_future() for _ in range(3)]
    wake = asyncio.Event()
    async with asyncio.TaskGroup() as flights:
        window = Window(3, flights, wake)
        for seq, ack in enumerate(acks, start=1):
            window.send(seq, message(seq), acknowledged(ack))
        window.send(None, message(0), acknowledged(loop.create_future()))  # past the size: no room
        assert window.room == -1
        assert window.last_seq == 3

        acks[1].set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert wake.is_set()
        assert window.landed() == (None, [])  # row 2 waits for row 1

        acks[0].set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert window.landed() == (2, [message(1), message(2)])
        assert window.room == 1

        acks[2].set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert window.landed() == (3, [message(3)])
        assert not window.empty  # the node status, never acknowledged here
        for task in asyncio.all_tasks():
            if task.get_name() == "publish:None":
                task.cancel()


async def test_a_failed_publish_ends_the_window_and_lands_nothing_after_it() -> None:
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[None] = loop.create_future()
    wake = asyncio.Event()
    windows: list[Window] = []

    async def publish_then_fail() -> None:
        async with asyncio.TaskGroup() as flights:
            window = Window(4, flights, wake)
            windows.append(window)
            window.send(1, message(1), acknowledged(failing))
            window.send(2, message(2), acknowledged(loop.create_future()))
            failing.set_exception(ConnectionError("lost"))

    with pytest.raises(ExceptionGroup) as raised:
        await publish_then_fail()
    assert raised.group_contains(ConnectionError)
    assert windows[0].landed() == (None, [])

"""The MQTT link's receiver hands what has arrived to intake in one go, in order (agent/mqtt.py).

aiomqtt's message iterator alone takes a turn of the event loop per message (a task and a wait each),
so a burst read off the socket in one go would reach the runtime a document or two at a time, each
decided and committed on its own. No broker here: the messages are put where the client's socket
callback puts them, its queue.
"""

from __future__ import annotations

import asyncio

import aiomqtt

from agent.mqtt import MqttLink, _Client
from agent.outbox import Outbox, Queued
from agent.protocol import Topics

TOPICS = Topics("reconcile/v1", "node-1")


class NoRows:
    def pending(self, limit: int, after: int | None = None) -> list[Queued]:
        return []

    def acknowledge(self, upto_seq: int, *, now: bool = True) -> None:
        pass


def link(on_message: object) -> MqttLink:
    return MqttLink(
        settings={"hostname": "127.0.0.1", "port": 1, "keepalive": 30},
        topics=TOPICS,
        store=NoRows(),
        outbox=Outbox(),
        node_status=lambda state: {"state": state},
        on_message=on_message,  # type: ignore[arg-type]
        instance_id="test",
    )


def desired(i: int) -> aiomqtt.Message:
    return aiomqtt.Message(TOPICS.desired(f"e-{i}"), f"doc {i}".encode(), 1, True, i + 1, None)


async def test_what_has_arrived_reaches_intake_in_one_turn_of_the_loop_in_order() -> None:
    turns = 0
    got: list[tuple[int, str, bytes]] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        got.append((turns, topic, payload))
        if len(got) == 5:
            arrived.set()

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    client = _Client(hostname="127.0.0.1", port=1)
    for i in range(5):
        client._queue.put_nowait(desired(i))
    async with asyncio.TaskGroup() as tasks:
        ticker = tasks.create_task(count_turns())
        receiver = tasks.create_task(link(on_message)._receive(client))
        async with asyncio.timeout(10):
            await arrived.wait()
        ticker.cancel()
        receiver.cancel()
    assert [(topic, payload) for _, topic, payload in got] == [
        (TOPICS.desired(f"e-{i}"), f"doc {i}".encode()) for i in range(5)
    ]
    assert len({turn for turn, _, _ in got}) == 1, got


async def test_a_lone_message_is_handed_over_without_waiting_for_more() -> None:
    got: list[str] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        got.append(topic)
        arrived.set()

    client = _Client(hostname="127.0.0.1", port=1)
    client._queue.put_nowait(desired(0))
    async with asyncio.TaskGroup() as tasks:
        receiver = tasks.create_task(link(on_message)._receive(client))
        async with asyncio.timeout(10):
            await arrived.wait()
        receiver.cancel()
    assert got == [TOPICS.desired("e-0")]

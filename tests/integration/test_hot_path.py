"""The path from a desired document to `validating` (bench/latency.py measures it): what it keeps while
it takes fewer loop turns. Every status is on disk before it reaches anyone, a new execution's statuses
come in revision order, and the link that writes what it queues at once (agent/tcp.py) delivers
everything, large payloads too, and leaves no writer behind (a writer left on a writable socket would
spin the event loop)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path

import aiomqtt

from agent.tcp import acknowledge_at_once, write_at_once
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    running_agent,
    sleeper,
    status_topic,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe

NODE = "node-1"
EXECUTIONS = 5


def _stored_revision(database: Path, execution_id: str) -> int:
    """The revision of ``execution_id`` committed in the agent's store, read as another process would."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state FROM executions WHERE execution_id = ?", (execution_id,)).fetchone()
    return 0 if row is None else int(json.loads(row[0])["revision"])


async def test_every_status_is_stored_before_it_arrives_and_each_comes_in_order(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    behind: list[str] = []
    async with (
        running_agent(config_for(broker, state_dir)),
        aiomqtt.Client(broker.host, broker.port, identifier=f"check-{uuid.uuid4().hex[:8]}") as client,
    ):
        await client.subscribe(status_topic(NODE, "+"), qos=1)

        async def check_on_arrival() -> None:
            async for message in client.messages:
                if not isinstance(message.payload, bytes) or not message.payload:
                    continue
                document = json.loads(message.payload)
                eid, revision = document["execution_id"], document["revision"]
                stored = _stored_revision(state_dir / "agent.db", eid)
                if stored < revision:
                    behind.append(f"{eid} revision {revision} arrived, {stored} stored")

        checker = asyncio.create_task(check_on_arrival())
        try:
            for i in range(EXECUTIONS):  # one after the other, as bench/latency.py samples them
                eid = f"hot-{i}"
                await watching.publish(
                    desired_topic(NODE, eid), desired(eid, command=sleeper(), window_s=60), retain=True
                )
                log = StatusLog(watching, NODE, eid)
                await log.wait_state("validating")
                assert log.states() == ["pending", "starting", "validating"]
                assert log.revisions() == [1, 2, 3]
        finally:
            checker.cancel()
    assert behind == []


async def test_the_link_writes_at_once_everything_and_leaves_no_writer(broker: Broker) -> None:
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    # Concurrently, as the outbox's window sends them, one of them more than a socket buffer takes; then
    # one alone, which is how a single status goes.
    batch = [f"small-{i}".encode() for i in range(50)] + [b"x" * (8 << 20)]
    payloads = [*batch, b"last"]
    async with (
        aiomqtt.Client(broker.host, broker.port, identifier=f"sub-{uuid.uuid4().hex[:8]}") as subscriber,
        aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as publisher,
    ):
        acknowledge_at_once(publisher)
        write_at_once(publisher)
        await subscriber.subscribe("hot/path", qos=1)

        async def collect() -> None:
            async for message in subscriber.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)
                if len(received) == len(payloads):
                    return

        collector = asyncio.create_task(collect())
        async with asyncio.TaskGroup() as flights:
            for payload in batch:
                flights.create_task(publisher.publish("hot/path", payload, qos=1, timeout=60))
        await publisher.publish("hot/path", payloads[-1], qos=1)  # its PUBACK takes loop turns enough
        async with asyncio.timeout(60):
            await collector
        sock = publisher._client.socket()
        assert sock is not None
        assert not publisher._client.want_write()
        assert not loop.remove_writer(sock.fileno())  # True would mean a writer was still registered
    assert received == payloads

"""The test harness itself: a real broker that can be restarted and killed, and the probe client."""

from __future__ import annotations

import uuid

import pytest

from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until, wait_until_sync


def _topic(name: str) -> str:
    return f"harness/{uuid.uuid4().hex[:8]}/{name}"


async def test_probe_round_trip(broker: Broker, probe: Probe) -> None:
    topic = _topic("ping")
    await probe.subscribe(topic)
    await probe.publish(topic, {"n": 1})
    await probe.publish(topic, "two")
    await probe.publish(topic, b"\x00three", qos=0)

    first = await probe.wait_for(lambda m: m.json()["n"] == 1)  # non-JSON messages just don't match
    assert first.topic == topic
    assert not first.retain
    last = await probe.wait_for(lambda m: m.payload.startswith(b"\x00"), after=first.index + 1)
    assert [m.payload for m in probe.messages_on(topic)] == [b'{"n": 1}', b"two", b"\x00three"]
    assert probe.messages_on("harness/+/ping")[-1] == last
    assert first.time <= last.time


async def test_wait_for_times_out_with_the_messages_seen(broker: Broker, probe: Probe) -> None:
    topic = _topic("noise")
    await probe.subscribe(topic)
    await probe.publish(topic, "not it")
    await probe.wait_for_topic(topic)
    with pytest.raises(AssertionError, match="not it"):
        await probe.wait_for(lambda m: m.text() == "never", timeout=0.2, what="the impossible")


async def test_retained_message_survives_a_clean_restart(broker: Broker) -> None:
    topic = _topic("desired")
    async with Probe(broker.host, broker.port) as publisher:
        await publisher.publish(topic, {"rev": 7}, retain=True)
    port = broker.port

    await broker.arestart()

    assert broker.port == port
    assert broker.starts == 2
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topic)
        msg = await probe.wait_for_topic(topic)
    assert msg.retain
    assert msg.json() == {"rev": 7}


async def test_kill_then_start_on_the_same_port(broker: Broker) -> None:
    topic = _topic("crash")
    marker = uuid.uuid4().hex.encode()
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topic)
        await probe.publish(topic, marker, retain=True)
        await probe.wait_for_topic(topic)
        broker.wait_persisted(marker)  # autosave on every change: on disk before the crash

        old_pid = broker.pid
        assert broker.kill() == -9
        assert not broker.running
        # the probe notices the lost connection: waiting fails fast instead of timing out
        with pytest.raises(AssertionError, match="connection lost"):
            await probe.wait_for(lambda m: False, timeout=30)

    await broker.astart()
    assert broker.running
    assert broker.pid != old_pid
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topic)
        msg = await probe.wait_for_topic(topic)
    assert msg.retain
    assert msg.payload == marker


def test_stop_is_clean_and_idempotent() -> None:
    with Broker() as b:
        assert b.running
        assert b.stop() == 0
        assert b.stop() is None
        b.start()
        assert b.running
    assert not b.data_dir.exists()  # a Broker without a data dir cleans up its temporary one


async def test_wait_helpers() -> None:
    calls: list[int] = []

    def grows() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until_sync(grows, timeout=5, interval=0.001) == 3

    async def async_cond() -> bool:
        calls.append(1)
        return len(calls) >= 6

    assert await wait_until(async_cond, timeout=5, interval=0.001) is True
    with pytest.raises(AssertionError, match="the flag"):
        await wait_until(lambda: False, timeout=0.05, what="the flag")

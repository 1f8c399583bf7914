"""Regression: a log request with the id ``request`` used to start an endless loop on a real agent (its
error reply went to logs/request, came back as a request, and so on: 220 messages in 3 s). Now it gets one
error reply on logs/invalid and nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.support.agent import PREFIX, config_for, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Probe

LOGS = f"{PREFIX}/nodes/node-1/logs"


async def test_a_request_named_request_gets_one_error_reply_and_no_loop(
    broker: Broker, probe: Probe, state_dir: Path
) -> None:
    await probe.subscribe(f"{LOGS}/#")
    async with running_agent(config_for(broker, state_dir)):
        await probe.publish(f"{LOGS}/request", b'{"request_id": "request", "execution_id": "x"}')
        error = await probe.wait_for(lambda m: m.topic == f"{LOGS}/invalid", what="the one error reply")
        assert error.json()["request_id"] is None
        assert "request_id" in error.json()["error"]
        # The fence: a request behind it, answered behind everything the first one caused.
        await probe.publish(f"{LOGS}/request", b'{"request_id": "fence", "execution_id": "x"}')
        await probe.wait_for(lambda m: m.topic == f"{LOGS}/fence", what="the fence's reply")
    assert [m.topic.rsplit("/", 1)[-1] for m in probe.messages] == ["request", "invalid", "request", "fence"]

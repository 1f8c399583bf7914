"""A publish the broker never acknowledges ends the connection (agent/window.py: one deadline for the
window), and what it carried goes again on the next one: a broker that stops answering (SIGSTOP here: a
hung broker, a black-holed route) is noticed within PUBLISH_TIMEOUT_S, not after the keepalive's 1.5
periods, and nothing is lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from agent.mqtt import PUBLISH_TIMEOUT_S
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    pid_of,
    running_agent,
    sleeper,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.wait import wait_until

NODE = "node-1"


async def test_an_unacknowledged_publish_ends_the_connection_and_goes_again(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    # A keepalive far beyond the publish timeout: only the window's deadline can notice the hung broker.
    config = config_for(broker, state_dir, keepalive_s=600)
    async with running_agent(config) as agent:
        await watching.publish(
            desired_topic(NODE, "hung-1"), desired("hung-1", command=sleeper()), retain=True
        )
        log = StatusLog(watching, NODE, "hung-1")
        validating = await log.wait_state("validating")
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            os.kill(
                pid_of(validating), signal.SIGKILL
            )  # the agent publishes what follows into the hung broker
            await wait_until(
                lambda: not agent.link.connected.is_set(),
                timeout=PUBLISH_TIMEOUT_S + 15,
                what="the agent to give up on the hung broker",
            )
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await wait_until(agent.link.connected.is_set, timeout=30, what="the agent reconnected")
        failed = await log.wait_state("failed", timeout=30)
        assert failed["revision"] == validating["revision"] + 1
        # Every revision, in order; the one in flight twice (QoS 1: the hung broker delivered its copy too
        # once it woke), as exact copies.
        revisions = log.revisions()
        assert sorted(set(revisions)) == list(range(1, failed["revision"] + 1))
        assert revisions == sorted(revisions)
        copies: dict[int, dict[str, object]] = {}
        for document in log.documents():
            assert copies.setdefault(document["revision"], document) == document

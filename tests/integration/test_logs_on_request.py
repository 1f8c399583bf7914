"""Logs on request through a real mosquitto, a real agent and real workloads (PROTOCOL.md, Logs on request),
and the operator's ``reconcile-agent logs`` as a real subprocess.

The workloads write when the test touches a file, so every step waits on a condition, never on time.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent.config import WorkloadLogsConfig
from agent.log_service import MAX_FOLLOWS
from agent.streams import read_range
from tests.integration.test_operator_cli import broker_args, cli, start
from tests.support.agent import StatusLog, config_for, desired, desired_topic, pid_of, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until

NODE = "node-1"
PREFIX = "reconcile/v1"
REQUESTS = f"{PREFIX}/nodes/{NODE}/logs/request"
REPLIES = f"{PREFIX}/nodes/{NODE}/logs/+"

# Writes "line n" for each file go-n that appears in argv[1] (n = 1, 2, ...), and ends at the file "end".
TALKER = """
import os, sys, time
n = 1
while not os.path.exists(os.path.join(sys.argv[1], "end")):
    if os.path.exists(os.path.join(sys.argv[1], f"go-{n}")):
        os.write(1, f"line {n}\\n".encode())
        os.write(2, f"err {n}\\n".encode())
        n += 1
    time.sleep(0.01)
os.write(1, "the end \\u20ac".encode())
"""


def written(run_dir: Path, stream: str = "stdout") -> bytes:
    return read_range(run_dir, stream, 0, 1 << 20)[1]


def replies_to(probe: Probe, request_id: str) -> list[dict[str, Any]]:
    return [m.json() for m in probe.messages_on(f"{PREFIX}/nodes/{NODE}/logs/{request_id}")]


async def until_eof(probe: Probe, request_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    def ended(m: Message) -> bool:
        return m.topic.endswith(f"/logs/{request_id}") and m.json()["eof"] is True

    await probe.wait_for(ended, timeout=timeout, what=f"the last reply to {request_id}")
    return replies_to(probe, request_id)


def data(replies: list[dict[str, Any]]) -> str:
    return "".join(r["data"] for r in replies)


async def start_talker(probe: Probe, signals: Path, execution: str = "talk") -> dict[str, Any]:
    log = StatusLog(probe, NODE, execution)
    await probe.subscribe(log.topic)
    command = [sys.executable, "-c", TALKER, str(signals)]
    await probe.publish(desired_topic(NODE, execution), desired(execution, command=command), retain=True)
    return await log.wait_state("running")


async def test_tail_follow_and_every_bad_request_over_the_bus(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    await probe.subscribe(REPLIES)
    async with running_agent(config_for(broker, state_dir)) as agent:
        running = await start_talker(probe, signals)
        assert agent.capabilities()["logs"] is True
        (signals / "go-1").touch()
        await wait_until(
            lambda: written(agent.runtime.executor.run_dir("talk")) == b"line 1\n", 10, what="line 1"
        )

        # A tail: in order, the last one eof, offsets in the whole log, QoS 1 and not retained.
        await probe.publish(REQUESTS, {"request_id": "t1", "execution_id": "talk"})
        tail = await until_eof(probe, "t1")
        assert data(tail) == "line 1\n"
        assert [r["seq"] for r in tail] == list(range(len(tail)))
        assert tail[0]["offset"] == 0
        assert tail[0]["node_id"] == NODE
        assert tail[0]["stream"] == "stdout"
        assert all(r["error"] is None for r in tail)
        messages = probe.messages_on(f"{PREFIX}/nodes/{NODE}/logs/t1")
        assert all(m.qos == 1 and not m.retain for m in messages)
        await probe.publish(
            REQUESTS, {"request_id": "t2", "execution_id": "talk", "stream": "stderr", "tail_bytes": 3}
        )
        assert data(await until_eof(probe, "t2")) == "err 1\n"[-3:]

        # Bad requests: one error reply each, eof, and nothing else changes.
        statuses = len(probe.messages_on(StatusLog(probe, NODE, "talk").topic))
        bad: list[tuple[str, bytes, str]] = [
            ("invalid", b"not json", "not JSON"),
            ("invalid", json.dumps({"execution_id": "talk"}).encode(), "request_id"),
            ("invalid", json.dumps({"request_id": "a b", "execution_id": "talk"}).encode(), "request_id"),
            ("b1", json.dumps({"request_id": "b1", "execution_id": "talk", "bogus": 1}).encode(), "bogus"),
            ("b2", json.dumps({"request_id": "b2", "execution_id": "nope"}).encode(), "unknown execution"),
            (
                "b3",
                json.dumps({"request_id": "b3", "execution_id": "talk", "tail_bytes": -1}).encode(),
                "tail_bytes",
            ),
            (
                "b4",
                json.dumps({"request_id": "b4", "execution_id": "talk", "tail_bytes": 1048577}).encode(),
                "tail_bytes",
            ),
            (
                "b5",
                json.dumps(
                    {"request_id": "b5", "execution_id": "talk", "follow": True, "follow_s": 3601}
                ).encode(),
                "follow_s",
            ),
            ("b6", json.dumps({"request_id": "b6", "cancel": True}).encode(), "no follow"),
        ]
        for request_id, payload, reason in bad:
            mark = probe.mark()
            await probe.publish(REQUESTS, payload)
            reply = await probe.wait_for(
                lambda m, r=request_id: m.topic.endswith(f"/logs/{r}"),
                after=mark,
                what=f"the error for {reason}",
            )
            document = reply.json()
            assert document["eof"] is True, document
            assert reason in document["error"], document
        assert pid_of(running) == pid_of(StatusLog(probe, NODE, "talk").documents()[-1])
        assert len(probe.messages_on(StatusLog(probe, NODE, "talk").topic)) == statuses

        # Follows: new output within the second, a ninth is refused, a cancel ends one, the end ends all.
        for n in range(MAX_FOLLOWS):
            await probe.publish(REQUESTS, {"request_id": f"f{n}", "execution_id": "talk", "follow": True})
        await wait_until(
            lambda: all(replies_to(probe, f"f{n}") for n in range(MAX_FOLLOWS)), 20, what="8 tails"
        )
        await probe.publish(REQUESTS, {"request_id": "f9", "execution_id": "talk", "follow": True})
        ninth = (await until_eof(probe, "f9"))[-1]
        assert "at most 8" in ninth["error"]
        (signals / "go-2").touch()
        await wait_until(
            lambda: all(data(replies_to(probe, f"f{n}")) == "line 1\nline 2\n" for n in range(MAX_FOLLOWS)),
            20,
            what="line 2 followed by all eight",
        )
        await probe.publish(REQUESTS, {"request_id": "f0", "cancel": True})
        cancelled = await until_eof(probe, "f0")
        assert cancelled[-1]["error"] is None
        assert agent.logs.follows == MAX_FOLLOWS - 1
        (signals / "end").touch()
        await StatusLog(probe, NODE, "talk").wait_state("completed")
        for n in range(1, MAX_FOLLOWS):
            followed = await until_eof(probe, f"f{n}")
            assert data(followed) == "line 1\nline 2\nthe end \u20ac"
            assert [r["seq"] for r in followed] == list(range(len(followed)))
            assert followed[-1]["error"] is None
        assert agent.logs.follows == 0


async def test_logs_across_rotated_segments_carry_their_offsets(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    config = config_for(broker, state_dir).model_copy(
        update={"workload_logs": WorkloadLogsConfig(max_bytes=4096, keep=1)}
    )
    await probe.subscribe(REPLIES)
    written = b"".join(f"{n:07d}\n".encode() for n in range(3000))  # 24000 bytes: 5 segments, 2 kept
    command = [sys.executable, "-c", f"import os; os.write(1, {written!r})"]
    log = StatusLog(probe, NODE, "big")
    await probe.subscribe(log.topic)
    async with running_agent(config):
        await probe.publish(desired_topic(NODE, "big"), desired("big", command=command), retain=True)
        await log.wait_state("completed")
        await probe.publish(REQUESTS, {"request_id": "all", "execution_id": "big", "tail_bytes": 1048576})
        replies = await until_eof(probe, "all")
    first = replies[0]["offset"]
    assert first == 4 * 4096  # the segments before the last two were removed: the offset says so
    assert data(replies).encode() == written[first:]


async def test_the_cli_prints_follows_and_fails_in_one_line(
    broker: Broker, probe: Probe, state_dir: Path, tmp_path: Path
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    async with running_agent(config_for(broker, state_dir)) as agent:
        await start_talker(probe, signals)
        (signals / "go-1").touch()
        await wait_until(
            lambda: written(agent.runtime.executor.run_dir("talk")) == b"line 1\n", 10, what="line 1"
        )
        done = await cli("logs", "talk", "--stderr", *broker_args(broker))  # the node found by its status
        assert done.code == 0, done.output
        assert done.stdout == "err 1\n"

        unknown = await cli("logs", "--node", NODE, "nope", *broker_args(broker))
        assert unknown.code == 1
        assert unknown.stderr.strip().count("\n") == 0
        assert "unknown execution" in unknown.stderr
        nowhere = await cli("logs", "nope", *broker_args(broker))
        assert nowhere.code == 1
        assert "no execution 'nope'" in nowhere.stderr
        silent = await cli("logs", "--node", "node-9", "talk", "--timeout", "1", *broker_args(broker))
        assert silent.code == 1
        assert "node-9 did not answer" in silent.stderr

        follow = await start("logs", "--node", NODE, "talk", "-f", *broker_args(broker))
        assert follow.stdout is not None
        await wait_until(lambda: agent.logs.follows == 1, 20, what="the CLI's follow")
        (signals / "go-2").touch()
        seen = b""
        async with asyncio.timeout(20):
            while b"line 2\n" not in seen:
                seen += await follow.stdout.read(100)
        assert seen.startswith(b"line 1\n")
        follow.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follow.wait(), 20) == 0
        await wait_until(lambda: agent.logs.follows == 0, 10, what="the follow cancelled on the node")
        (signals / "end").touch()
        await StatusLog(probe, NODE, "talk").wait_state("completed")
        ended = await cli("logs", "--node", NODE, "talk", *broker_args(broker))
        assert ended.code == 0
        assert ended.stdout == "line 1\nline 2\nthe end \u20ac"

"""A flood of fuzzed desired payloads through a stock mosquitto into a running agent.

    .venv/bin/python -m bench.fuzz [--count 2000] [--seed 1] [--window 200] [--json]

Starts mosquitto with a minimal generated config (a listener on a free port, everything else at
mosquitto's defaults: no persistence, ``max_queued_messages 1000``, ``max_inflight_messages 20``) and the
agent as a subprocess via the CLI (``python -m agent run --config``, a temporary state directory,
JSON logs at level warning to a file). It runs one valid long-running workload (``sleep 1000000``, the
*keeper*) to ``running``, then publishes ``--count`` payloads made by tests/support/fuzz.py
(``fuzz_payload``: valid documents mutated field by field, byte-damaged ones, raw bytes; seeded):

- 70 % on fresh topics, a new execution id each;
- 20 % on the keeper's own topic. Only payloads the agent's parser rejects are sent there (a valid
  one would legitimately change the keeper), and never twice the same in a row (a redelivery is
  reported once);
- 10 % on malformed topics: execution ids that are no valid ids but can be published to (too long,
  spaces, RTL and zero-width characters, ``$``...; wildcards and ``/`` cannot be published to one level).

A fresh-topic payload that would start a workload (accepted with ``running``) is drawn again, so the flood
does not start thousands of processes; accepted ``pending`` and ``stopped`` documents stay in, and are
deleted (an empty payload, as an orchestrator cleans up) right after, unless ``--keep-accepted``: an
accepted execution is remembered until deleted, as the contract says, and with fuzzed sizes each costs
about 10 KB of heap, which is not what this benchmark measures.

Answers: an observer subscribes (QoS 1) to every execution status and to the node's events. Publishing is
paced: at most ``--window`` payloads on valid topics wait for their answer at any time, so neither the
agent's nor the observer's queue at the broker gets near mosquitto's 1000 messages, and nothing is
dropped. A fresh-topic payload is answered by a status or a ``desired_rejected`` event of its id; a
keeper-topic payload that is not stale (generation unreadable or above the keeper's) by a
``desired_rejected`` event of the keeper; a malformed-topic payload by a node event, once per distinct
(topic, payload) ever.

Then it checks and prints: the agent is still up; every payload on a valid topic was answered; the
agent's log holds no "Traceback"; the keeper runs with the pid it had; a new valid execution still
reaches ``running``; the agent's RSS (psutil) before the flood and after it; payloads per second. It
exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.protocol import Accepted, Rejected, parse_desired, payload_digest  # noqa: E402
from tests.support.agent import AgentProcess, pid_alive, pid_of  # noqa: E402
from tests.support.broker import find_mosquitto, free_port  # noqa: E402
from tests.support.fuzz import bad_topic_id, fuzz_payload  # noqa: E402

NODE = "fuzz-node"
PREFIX = "reconcile/v1"
KEEPER = "keeper"
MAX_PAYLOAD = 262144  # the agent's default limits.max_payload_bytes
ANSWER_TIMEOUT_S = 120.0


def desired_topic(execution_id: str) -> str:
    return f"{PREFIX}/nodes/{NODE}/executions/{execution_id}/desired"


def sleeper(execution_id: str) -> bytes:
    document = {
        "execution_id": execution_id,
        "generation": 1,
        "desired_state": {"state_type": "running"},
        "spec": {"command": ["sleep", "1000000"], "validation": {"window_s": 0.2}},  # outlasts any flood
    }
    return json.dumps(document).encode()


class Mosquitto:
    """A stock mosquitto: one listener, every other setting at its default."""

    def __init__(self, workdir: Path) -> None:
        path = find_mosquitto()
        if path is None:
            raise SystemExit("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.host, self.port = "127.0.0.1", free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\n")
        self.log = (workdir / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen([path, "-c", str(conf)], stdout=self.log, stderr=self.log)

    async def ready(self) -> None:
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(self.host, self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)  # polling a port that is not open yet

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@dataclass
class Answers:
    """What the observer saw, counted as it arrives."""

    ids: set[str] = field(default_factory=set)  # executions with a status or a rejection event
    waiting: set[str] = field(default_factory=set)  # fresh executions sent and not answered yet
    keeper_rejections: int = 0
    node_rejections: int = 0
    node_reasons: list[str] = field(default_factory=list)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest status of the few we watch
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/status") and "/executions/" in topic:
            execution_id = topic.split("/executions/", 1)[1].removesuffix("/status")
            self.ids.add(execution_id)
            self.waiting.discard(execution_id)
            if payload and (execution_id == KEEPER or execution_id.startswith("after-")):
                self.statuses[execution_id] = json.loads(payload)
        elif topic.endswith("/events"):
            event = json.loads(payload)
            if event["type"] == "desired_rejected":
                if event["execution_id"] is None:
                    self.node_rejections += 1
                    self.node_reasons.append(event["reason"])
                elif event["execution_id"] == KEEPER:
                    self.keeper_rejections += 1
                else:
                    self.ids.add(event["execution_id"])
                    self.waiting.discard(event["execution_id"])
        self.changed.set()

    async def wait(self, predicate: Any, what: str, timeout: float = ANSWER_TIMEOUT_S) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}") from None


async def observe(client: aiomqtt.Client, answers: Answers) -> None:
    async for message in client.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        answers.take(str(message.topic), payload)


@dataclass
class Sent:
    fresh: list[str] = field(default_factory=list)
    accepted: int = 0  # fresh payloads the agent accepts (pending or stopped)
    keeper: int = 0  # payloads that must be answered
    keeper_stale: int = 0  # payloads that are stale: ignored, no answer
    bad_topics: set[tuple[str, str]] = field(default_factory=set)  # (topic, digest): answered once each
    bad_topic_payloads: int = 0


def keeper_payload(rng: random.Random, last_digest: str | None) -> tuple[bytes, bool]:
    """A payload the parser rejects for the keeper's topic, and whether the agent must answer it."""
    while True:
        payload = fuzz_payload(rng, KEEPER)
        parsed = parse_desired(KEEPER, payload, MAX_PAYLOAD)
        if isinstance(parsed, Rejected) and parsed.digest != last_digest:
            return payload, parsed.generation is None or parsed.generation > 1


def fresh_payload(rng: random.Random, execution_id: str) -> tuple[bytes, bool]:
    """A payload for a new execution that starts no workload, and whether the agent accepts it."""
    while True:
        payload = fuzz_payload(rng, execution_id)
        parsed = parse_desired(execution_id, payload, MAX_PAYLOAD)
        if not isinstance(parsed, Accepted):
            return payload, False
        if parsed.document.desired_state.state_type != "running":
            return payload, True


async def flood(client: aiomqtt.Client, answers: Answers, args: argparse.Namespace) -> Sent:
    rng, window = random.Random(args.seed), args.window
    sent = Sent()
    last_keeper_digest: str | None = None

    def outstanding() -> int:
        return len(answers.waiting) + sent.keeper - answers.keeper_rejections

    for i in range(args.count):
        roll = rng.random()
        if roll < 0.7:
            execution_id = f"f{i}"
            payload, accepted = fresh_payload(rng, execution_id)
            answers.waiting.add(execution_id)  # before: its answer may come before the publish returns
            await client.publish(desired_topic(execution_id), payload, qos=1)
            sent.fresh.append(execution_id)
            if accepted:
                sent.accepted += 1
                if not args.keep_accepted:  # handled in order: deleted once it has been answered
                    await client.publish(desired_topic(execution_id), b"", qos=1)
        elif roll < 0.9:
            payload, answered = keeper_payload(rng, last_keeper_digest)
            last_keeper_digest = payload_digest(payload)
            await client.publish(desired_topic(KEEPER), payload, qos=1)
            if answered:
                sent.keeper += 1
            else:
                sent.keeper_stale += 1
        else:
            topic = desired_topic(bad_topic_id(rng))
            payload = fuzz_payload(rng, "bad")
            await client.publish(topic, payload, qos=1)
            sent.bad_topics.add((topic, payload_digest(payload)))
            sent.bad_topic_payloads += 1
        if outstanding() > window:
            await answers.wait(lambda: outstanding() <= window // 2, f"answers (payload {i})")
    return sent


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def workload_groups(state_dir: Path) -> list[int]:
    groups = []
    for pid_file in state_dir.glob("executions/*/pid-*"):
        with contextlib.suppress(OSError, ValueError):
            groups.append(int(pid_file.read_text().split()[0]))
    return groups


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    state_dir = Path(tempfile.mkdtemp(prefix="bench-fuzz-state-", dir=args.state_parent))
    broker = Mosquitto(workdir)
    agent: AgentProcess | None = None
    try:
        await broker.ready()
        agent = AgentProcess(
            broker,  # type: ignore[arg-type]  # it only reads host and port
            workdir,
            node_id=NODE,
            state_dir=state_dir,
            log={"format": "json", "level": args.log_level},
        )
        agent.start()
        assert agent.proc is not None
        process = psutil.Process(agent.proc.pid)
        answers = Answers()
        async with (
            aiomqtt.Client(broker.host, broker.port, identifier="fuzz-observer") as observer,
            aiomqtt.Client(broker.host, broker.port, identifier="fuzz-publisher") as publisher,
        ):
            await observer.subscribe(f"{PREFIX}/nodes/{NODE}/executions/+/status", qos=1)
            await observer.subscribe(f"{PREFIX}/nodes/{NODE}/events", qos=1)
            watcher = asyncio.create_task(observe(observer, answers), name="observer")
            await publisher.publish(desired_topic(KEEPER), sleeper(KEEPER), qos=1, retain=True)
            await answers.wait(
                lambda: (
                    answers.statuses.get(KEEPER, {}).get("observed_state", {}).get("state_type") == "running"
                ),
                "the keeper running",
                timeout=60,
            )
            keeper_pid = pid_of(answers.statuses[KEEPER])
            rss_before = process.memory_info().rss
            started = time.perf_counter()
            sent = await flood(publisher, answers, args)
            fresh = set(sent.fresh)
            await answers.wait(
                lambda: not answers.waiting and answers.keeper_rejections >= sent.keeper,
                "the last answers",
            )
            elapsed = time.perf_counter() - started
            # node events for bad topics are not paced: give the last ones their time
            with contextlib.suppress(SystemExit):
                await answers.wait(
                    lambda: answers.node_rejections >= len(sent.bad_topics), "bad-topic events", timeout=30
                )
            rss_after = process.memory_info().rss
            rss_peak_kib = peak_rss_kib(process.pid)
            agent_up = agent.proc.poll() is None
            keeper_status = answers.statuses[KEEPER]
            keeper_kept = (
                pid_of(keeper_status) == keeper_pid
                and keeper_status["observed_state"]["state_type"] == "running"
                and pid_alive(keeper_pid)
            )
            after = f"after-{args.seed}"
            await publisher.publish(desired_topic(after), sleeper(after), qos=1, retain=True)
            await answers.wait(
                lambda: (
                    answers.statuses.get(after, {}).get("observed_state", {}).get("state_type") == "running"
                ),
                "a new valid execution running",
                timeout=60,
            )
            for execution_id in (KEEPER, after):  # delete both: the agent stops their workloads
                await publisher.publish(desired_topic(execution_id), b"", qos=1, retain=True)
            await answers.wait(lambda: not pid_alive(keeper_pid), "the keeper stopped", timeout=30)
            watcher.cancel()
        log_text = agent.log_path.read_text(errors="replace")
        reasons = "\n".join(answers.node_reasons)
        unanswered_topics = sorted({t for t, _ in sent.bad_topics if repr(t) not in reasons})
        answered_fresh = len(fresh & answers.ids)
        return {
            "count": args.count,
            "seed": args.seed,
            "window": args.window,
            "seconds": elapsed,
            "payloads_per_s": args.count / elapsed,
            "fresh_sent": len(sent.fresh),
            "fresh_answered": answered_fresh,
            "fresh_accepted": sent.accepted,
            "accepted_kept": args.keep_accepted,
            "keeper_sent": sent.keeper + sent.keeper_stale,
            "keeper_expected_answers": sent.keeper,
            "keeper_answered": answers.keeper_rejections,
            "keeper_stale_ignored": sent.keeper_stale,
            "bad_topic_sent": sent.bad_topic_payloads,
            "bad_topic_distinct": len(sent.bad_topics),
            "bad_topic_answered": answers.node_rejections,
            "bad_topics_unanswered": unanswered_topics,
            "agent_up": agent_up,
            "tracebacks": log_text.count("Traceback"),
            "log_errors": sum(1 for line in log_text.splitlines() if '"level": "error"' in line),
            "keeper_pid_kept": keeper_kept,
            "keeper_pid": [keeper_pid, pid_of(keeper_status)],
            "keeper_state": keeper_status["observed_state"]["state_type"],
            "new_execution_ran": True,
            "rss_before_mib": rss_before / 2**20,
            "rss_after_mib": rss_after / 2**20,
            "rss_peak_mib": rss_peak_kib / 2**10,
            "workdir": str(workdir),
        }
    finally:
        if agent is not None:
            agent.kill()
            for group in workload_groups(agent.state_dir):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
        broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=200, help="payloads waiting for an answer, at most")
    parser.add_argument(
        "--keep-accepted",
        action="store_true",
        help="do not delete the accepted fresh executions (each is remembered, as the contract says)",
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--state-parent", default=None, help="where the agent's state directory is made")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    ok = (
        figures["agent_up"]
        and figures["fresh_answered"] == figures["fresh_sent"]
        and figures["keeper_answered"] >= figures["keeper_expected_answers"]
        and figures["tracebacks"] == 0
        and figures["keeper_pid_kept"]
    )
    if args.json:
        print(json.dumps(figures))
        if ok:
            shutil.rmtree(figures["workdir"], ignore_errors=True)
        return 0 if ok else 1
    f = figures
    print(
        f"{f['count']} fuzzed payloads (seed {f['seed']}) in {f['seconds']:.1f} s: {f['payloads_per_s']:.0f} payloads/s"
    )
    print(
        f"fresh topics       sent {f['fresh_sent']}   answered {f['fresh_answered']}   accepted "
        f"{f['fresh_accepted']} ({'kept' if f['accepted_kept'] else 'deleted once answered'})"
    )
    print(
        f"keeper's topic     sent {f['keeper_sent']}   to answer {f['keeper_expected_answers']}   "
        f"answered {f['keeper_answered']}   stale (ignored) {f['keeper_stale_ignored']}"
    )
    print(
        f"malformed topics   sent {f['bad_topic_sent']}   distinct {f['bad_topic_distinct']}   "
        f"node events {f['bad_topic_answered']}"
    )
    print(
        f"agent up {f['agent_up']}   tracebacks in its log {f['tracebacks']}   error lines {f['log_errors']}"
    )
    print(
        f"keeper kept its pid and runs {f['keeper_pid_kept']}   a new valid execution ran {f['new_execution_ran']}"
    )
    print(
        f"agent RSS   before {f['rss_before_mib']:.1f} MiB   after {f['rss_after_mib']:.1f} MiB   "
        f"peak {f['rss_peak_mib']:.1f} MiB   (target <= 150 MB)"
    )
    if ok:
        shutil.rmtree(f["workdir"], ignore_errors=True)
        print("all checks hold")
    else:
        print(f"A CHECK FAILED; the agent's log and the broker's are in {f['workdir']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

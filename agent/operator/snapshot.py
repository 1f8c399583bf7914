"""What the broker holds now, whole: the retained statuses, folded to the latest per execution.

A broker does not hand a subscription every retained message it holds. A QoS 1 subscription gets at most
its per-client queue (mosquitto: ``max_queued_messages`` 1000, plus 20 in flight; EMQX and HiveMQ queue
1000 too) and the rest is dropped, silently. At QoS 0 mosquitto drops only while the packets it could
not yet write to our socket number ``max_queued_messages``, and then it drops *every* packet, SUBACKs
and PUBACKs included, which wedges the connection. So each read here is a *pass*: a connection of its
own (clean session), filters at QoS 0, a QoS 0 fence token, closed afterwards. What a pass can prove:

- fewer than :data:`SURE_BELOW` messages: nothing can have been dropped (the queue never filled);
- otherwise it is checked against what the agents count themselves: an ``online`` node status carries
  ``executions``, a count per observed state, one retained status per execution. A node whose pass fell
  short is read again (passes add up: which packets a full queue drops depends on timing), and if it
  still falls short the caller is told, in words, on stderr.

A fleet is read in one pass when that pass is small, else node by node, so one pass carries one node's
executions (a few thousand fit in a loopback socket's buffers at about 1 KiB each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiomqtt

from agent.operator.connection import Target, new_client_id
from agent.operator.errors import OperatorError
from agent.operator.session import FILTERS_PER_PACKET, Incoming, reason
from agent.operator.status import ExecutionView, parse_status
from agent.protocol import ANY, FleetTopics

Key = tuple[str, str]  # (node id, execution id)

# A pass with fewer messages than the smallest per-client queue of the common brokers cannot have been cut.
SURE_BELOW = 1000
PASSES = 3  # per node, when what its agent counts has not all arrived
PASS_TIMEOUT_S = 10.0  # a pass that overflowed never sees its fence come back: bounded by this ...
QUIET_S = 1.0  # ... or by a second without any message, once retained messages stopped coming


@dataclass(frozen=True)
class Pass:
    messages: list[Incoming]
    fenced: bool  # the fence token came back: everything the broker sent before it has arrived


@dataclass
class Snapshot:
    """Every execution the broker retains a status for, and what could not be made sure of."""

    views: dict[Key, ExecutionView] = field(default_factory=dict)
    nodes: dict[str, dict[str, object]] = field(default_factory=dict)  # node id -> its node status
    warnings: list[str] = field(default_factory=list)

    def ordered(self) -> list[ExecutionView]:
        return ordered(self.views)


def fold(topics: FleetTopics, messages: Iterable[Incoming]) -> dict[Key, ExecutionView]:
    """The latest status of each execution; an empty payload (a deleted execution) removes it.

    A revision at or below the one already held is a duplicate (delivery is at least once) and ignored.
    """
    views: dict[Key, ExecutionView] = {}
    merge(views, topics, messages)
    return views


def merge(views: dict[Key, ExecutionView], topics: FleetTopics, messages: Iterable[Incoming]) -> None:
    for message in messages:
        where = topics.where(message.topic)
        if where is None or where.kind != "execution_status" or where.execution_id is None:
            continue
        key = (where.node_id, where.execution_id)
        view = parse_status(message.payload, *key)
        if view is None:
            if not message.payload:
                views.pop(key, None)
            continue
        held = views.get(key)
        if held is None or view.revision > held.revision:
            views[key] = view


def ordered(views: dict[Key, ExecutionView]) -> list[ExecutionView]:
    return [views[key] for key in sorted(views)]


async def read_pass(target: Target, filters: Sequence[str]) -> Pass:
    """One pass over what the broker retains under ``filters`` (which must not overlap)."""
    settings = {**target.settings, "identifier": new_client_id()}
    fence_topic = FleetTopics(target.prefix).fence(settings["identifier"])
    token = uuid.uuid4().hex.encode()
    messages: list[Incoming] = []
    client = aiomqtt.Client(**settings)
    try:
        await client.__aenter__()
    except (aiomqtt.MqttError, OSError) as exc:
        raise OperatorError(f"cannot reach the broker at {target.address}: {reason(exc)}") from None
    try:
        await client.subscribe(fence_topic, qos=0)  # first: its SUBACK cannot be dropped yet
        for start in range(0, len(filters), FILTERS_PER_PACKET):
            await client.subscribe([(f, 0) for f in filters[start : start + FILTERS_PER_PACKET]])
        await client.publish(fence_topic, token, qos=0)  # QoS 0: no PUBACK to lose
        fenced = await _collect(client, fence_topic, token, filters, messages)
    except aiomqtt.MqttError as exc:
        if not messages:
            raise OperatorError(
                f"lost the connection to the broker at {target.address}: {reason(exc)}"
            ) from None
        fenced = False  # cut off in the middle (an overflowing broker may drop a PINGRESP): unsure
    finally:
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)
    return Pass(messages, fenced)


async def _collect(
    client: aiomqtt.Client, fence_topic: str, token: bytes, filters: Sequence[str], into: list[Incoming]
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PASS_TIMEOUT_S
    stream = client.messages
    with contextlib.suppress(TimeoutError):
        while True:
            # Only a pass big enough to have filled the broker's queue can have lost its fence token: only
            # then does a quiet second end it (a loaded machine can be quiet that long before the token).
            quiet = QUIET_S if len(into) >= SURE_BELOW else PASS_TIMEOUT_S
            wait = min(quiet, deadline - loop.time())
            async with asyncio.timeout(max(0.0, wait)):
                message = await anext(stream)
            if message.topic.value == fence_topic:
                if message.payload == token:
                    return True
                continue
            if any(message.topic.matches(f) for f in filters):  # amqtt 0.12 sends unasked retained ones
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                into.append(Incoming(message.topic.value, bytes(payload), bool(message.retain)))
    return False


def sure(result: Pass) -> bool:
    return result.fenced and len(result.messages) < SURE_BELOW


async def execution_statuses(target: Target, node_id: str = ANY, execution_id: str = ANY) -> Snapshot:
    """Every retained status of the executions matching ``node_id`` and ``execution_id`` (``+``: any)."""
    topics = FleetTopics(target.prefix)
    snapshot = Snapshot()
    node_pass = await read_pass(target, [topics.node_status(node_id)])
    for message in node_pass.messages:
        where = topics.where(message.topic)
        document = _object(message.payload)
        if where is not None and where.kind == "node_status" and document is not None:
            snapshot.nodes[where.node_id] = document
    if not sure(node_pass):
        snapshot.warnings.append(
            f"reconcile-agent: {len(node_pass.messages)} node statuses came in one read, and the broker may "
            "have dropped some: executions of a node missing there are only shown if they came below"
        )
    if node_id == ANY:
        wide = await read_pass(target, [topics.status(ANY, execution_id)])
        merge(snapshot.views, topics, wide.messages)
        if sure(wide):
            return snapshot
        nodes = sorted(set(snapshot.nodes) | {node for node, _ in snapshot.views})
    else:
        nodes = [node_id]
    for node in nodes:
        await _read_node(target, topics, snapshot, node, execution_id)
    return snapshot


async def _read_node(
    target: Target, topics: FleetTopics, snapshot: Snapshot, node: str, execution_id: str
) -> None:
    """Read one node's statuses until sure, or say why not."""
    expected = _counted(snapshot.nodes.get(node)) if execution_id == ANY else None
    views: dict[Key, ExecutionView] = {}
    complete = False
    for _ in range(PASSES):
        result = await read_pass(target, [topics.status(node, execution_id)])
        before = len(views)
        merge(views, topics, result.messages)
        complete = sure(result) or (expected is not None and len(views) >= expected)
        if complete or (expected is None and before and len(views) == before):
            break  # sure, or nothing to count against and reading again brought nothing new
    merge_views(snapshot.views, views)
    seen = sum(1 for key in snapshot.views if key[0] == node)
    if complete or (expected is not None and seen >= expected):
        return
    if expected is not None:
        snapshot.warnings.append(
            f"reconcile-agent: node {node}: {seen} of the {expected} executions its agent counts came from "
            "the broker, which dropped the rest (its per-client queue, mosquitto's max_queued_messages); "
            "the list is incomplete"
        )
    else:
        snapshot.warnings.append(
            f"reconcile-agent: node {node}: {seen} retained statuses, too many to be sure none was dropped, "
            "and no node status of a running agent to count them against: the list may be incomplete"
        )


def merge_views(into: dict[Key, ExecutionView], views: dict[Key, ExecutionView]) -> None:
    for key, view in views.items():
        held = into.get(key)
        if held is None or view.revision > held.revision:
            into[key] = view


def _counted(document: dict[str, object] | None) -> int | None:
    """How many executions an ``online`` agent counts in its node status; None if it does not say.

    An ``offline`` document may be the last will, made when the agent connected: its counts are old.
    """
    if document is None or document.get("state") != "online":
        return None
    counts = document.get("executions")
    if not isinstance(counts, dict):
        return None
    numbers = [n for n in counts.values() if type(n) is int and n >= 0]
    return sum(numbers) if len(numbers) == len(counts) else None


def _object(payload: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


async def exact_topics(target: Target, topics: Sequence[str]) -> list[Incoming]:
    """The retained messages of many exact topics (at most one each), in passes too small to be cut."""
    messages: list[Incoming] = []
    for start in range(0, len(topics), SURE_BELOW - 1):
        result = await read_pass(target, topics[start : start + SURE_BELOW - 1])
        messages += result.messages
    return messages

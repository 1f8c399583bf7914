"""Fuzzed log requests (tests/support/fuzz.py) through the parser and the log service.

Whatever arrives on ``P/nodes/N/logs/request``: ``parse_log_request`` never raises and says request,
cancel, or rejected with a reason (and a request_id only when it can name a topic); an accepted request
reads back the same from its own JSON. Through :class:`LogService`, every payload for an execution the
agent does not know is answered with exactly one reply, with ``error`` set and ``eof`` true, on a topic
of this node's ``logs/`` level, and nothing is left being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

from hypothesis import HealthCheck, given, settings

from agent.log_service import LogService
from agent.names import is_valid_id
from agent.protocol import LogCancel, LogRequest, LogRequestRejected, Topics, parse_log_request
from tests.support import fuzz

MAX_BYTES = 262_144
TOPICS = Topics("reconcile/v1", "node-1")
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def check(payload: bytes) -> None:
    parsed = parse_log_request(payload, MAX_BYTES)
    if isinstance(parsed, LogRequestRejected):
        assert parsed.reason
        assert parsed.request_id is None or is_valid_id(parsed.request_id)
        return
    assert isinstance(parsed, LogRequest | LogCancel)
    again = parse_log_request(json.dumps(parsed.model_dump()).encode(), MAX_BYTES)
    assert again == parsed


@FUZZ
@given(fuzz.log_request_payloads())
def test_parse_log_request_never_raises_and_always_answers(payload: bytes) -> None:
    check(payload)


def test_the_contract_bounds_are_rejected_each_naming_its_field() -> None:
    base = {"request_id": "r1", "execution_id": "e1"}
    cases = {
        "tail_bytes": [-1, 1024 * 1024 + 1, 2.0, True, "1"],
        "follow_s": [3600.5, 0, -1, float("nan"), "1"],
        "follow": [1, "yes", None],
        "stream": ["stdin", None],
        "request_id": ["a/b", "", "x" * 129, 7, None],
        "execution_id": ["#", "", None],
        "bogus": [1],
    }
    for field, values in cases.items():
        for value in values:
            payload = json.dumps({**base, field: value}).encode()
            parsed = parse_log_request(payload, MAX_BYTES)
            assert isinstance(parsed, LogRequestRejected), (field, value)
            assert field in parsed.reason, (field, value, parsed.reason)
            assert parsed.request_id == (None if field == "request_id" else "r1")
    for payload in (
        b"not json",
        b"[]",
        b"{",
        json.dumps({"execution_id": "e1"}).encode(),
        b"x" * (MAX_BYTES + 1),
    ):
        parsed = parse_log_request(payload, MAX_BYTES)
        assert isinstance(parsed, LogRequestRejected)
        assert parsed.request_id is None
    assert isinstance(
        parse_log_request(b'{"request_id": "r", "cancel": false}', MAX_BYTES), LogRequestRejected
    )
    assert parse_log_request(
        json.dumps({**base, "tail_bytes": 1024 * 1024}).encode(), MAX_BYTES
    ) == LogRequest(request_id="r1", execution_id="e1", tail_bytes=1024 * 1024)


async def test_every_payload_gets_exactly_one_error_reply_and_nothing_is_served() -> None:
    service = LogService(TOPICS, lambda execution_id: None, MAX_BYTES)
    runner = asyncio.create_task(service.run())
    rng = random.Random(14)
    try:
        await asyncio.sleep(0)  # the service's TaskGroup is up
        for _ in range(300):
            payload = fuzz.log_request_payload(rng)
            service.on_request(payload)
            assert service.replies.qsize() == 1, payload
            reply = service.replies.get_nowait()
            assert reply.retain is False
            head, _, name = reply.topic.rpartition("/")
            assert head == "reconcile/v1/nodes/node-1/logs"
            assert is_valid_id(name)
            document = json.loads(reply.payload)
            assert document["eof"] is True
            assert document["error"]
            assert document["data"] == ""
            assert service.follows == 0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

"""A log request's id names its reply topic, logs/<request_id>: the id ``request`` would name the request
topic itself, so its replies would come back to the agent as requests, each answered on the same topic,
without end (found by reading the ACL: logs/+ holds both). It is refused, and its one error reply goes to
logs/invalid."""

from __future__ import annotations

import pytest

from agent.protocol import REQUEST_LEAF, LogRequest, LogRequestRejected, Topics, parse_log_request

MAX = 65536


@pytest.mark.parametrize(
    "payload",
    [
        b'{"request_id": "request", "execution_id": "x"}',
        b'{"request_id": "request", "cancel": true}',
        b'{"request_id": "request", "execution_id": "x", "bogus": 1}',
        b'{"request_id": "request", "execution_id": "x", "execution_id": "y"}',
    ],
)
def test_the_request_topic_s_own_name_is_no_request_id(payload: bytes) -> None:
    parsed = parse_log_request(payload, MAX)
    assert isinstance(parsed, LogRequestRejected)
    assert parsed.request_id is None, "its error reply must not go to logs/request"
    topics = Topics("reconcile/v1", "node-1")
    assert topics.log_replies(parsed.request_id) == "reconcile/v1/nodes/node-1/logs/invalid"
    assert topics.log_requests == f"reconcile/v1/nodes/node-1/logs/{REQUEST_LEAF}"


def test_other_ids_still_name_their_reply_topic() -> None:
    parsed = parse_log_request(b'{"request_id": "requests", "execution_id": "x"}', MAX)
    assert isinstance(parsed, LogRequest)
    assert parsed.request_id == "requests"

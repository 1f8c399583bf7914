"""Node control documents (PROTOCOL.md, Node control) fuzzed through the parser and the pure core.

Whatever arrives on ``P/nodes/N/control``: ``parse_control`` never raises and accepts exactly the
documents ``{"generation": int >= 1, "cordoned": bool}``, rejecting everything else with a reason that
names the field or the payload; ``on_control`` fed a sequence of them never lowers the generation,
changes the cordon only for a higher generation, reports every rejected payload once, and keeps quiet
about the document in force delivered again (the broker's retained copy, on every reconnect).
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control import EMPTY_REASON, ControlAccepted, ControlParsed, ControlRejected, parse_control
from agent.core.control import NodeControl, on_control
from tests.support import fuzz

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_parsed(payload: bytes, parsed: ControlParsed) -> None:
    if isinstance(parsed, ControlAccepted):
        raw = json.loads(payload)
        assert raw == {"generation": parsed.document.generation, "cordoned": parsed.document.cordoned}
        assert type(raw["generation"]) is int
        assert raw["generation"] >= 1
        assert type(raw["cordoned"]) is bool
        again = parse_control(parsed.document.model_dump_json().encode())
        assert isinstance(again, ControlAccepted)
        assert again.document == parsed.document
        return
    assert isinstance(parsed, ControlRejected)
    assert parsed.reason.strip()
    starts = ("payload ", "(document)", "empty control document", *fuzz.CONTROL_FIELDS)
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        raw = None
    keys = tuple(str(k) for k in raw) if isinstance(raw, dict) else ()
    assert parsed.reason.startswith(starts + keys), parsed.reason
    assert parsed.generation is None or (type(parsed.generation) is int and parsed.generation >= 1)


@FUZZ
@given(fuzz.control_payloads())
def test_parse_control_never_raises_and_always_answers(payload: bytes) -> None:
    check_parsed(payload, parse_control(payload))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_raw_bytes_are_answered(payload: bytes) -> None:
    check_parsed(payload, parse_control(payload))


def check_step(before: NodeControl, payload: bytes, after: NodeControl, reason: str | None) -> None:
    parsed = parse_control(payload)
    assert after.generation >= before.generation
    if (after.generation, after.cordoned) != (before.generation, before.cordoned):
        assert isinstance(parsed, ControlAccepted)
        assert parsed.document.generation > before.generation
        assert (after.generation, after.cordoned) == (parsed.document.generation, parsed.document.cordoned)
        assert reason is None
    if reason is not None:
        assert after.rejected_digest == parsed.digest
        assert (after.generation, after.cordoned) == (before.generation, before.cordoned), "changes nothing"


@FUZZ
@given(st.lists(fuzz.control_payloads(), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_a_sequence_of_control_documents(payloads: list[bytes], rng: random.Random) -> None:
    control = NodeControl(generation=rng.choice([0, 1, 2**20]), cordoned=rng.random() < 0.5)
    for payload in payloads:
        new, reason = on_control(control, parse_control(payload))
        check_step(control, payload, new, reason)
        again, repeated = on_control(new, parse_control(payload))  # a redelivery of the same payload
        assert again == new
        assert repeated is None, "reported once"
        control = new


def test_a_seeded_corpus() -> None:
    rng = random.Random(14)
    control = NodeControl()
    for _ in range(3000):
        payload = fuzz.control_payload(rng)
        check_parsed(payload, parse := parse_control(payload))
        new, reason = on_control(control, parse)
        check_step(control, payload, new, reason)
        control = new


# --- Each kind of bad control document, by name ------------------------------------------------------------

CORDONED_AT_3 = NodeControl(generation=3, cordoned=True)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "payload is not JSON"),
        (b"", EMPTY_REASON),
        (b"[1]", "payload is JSON list, not an object"),
        (b'{"generation": 4, "cordoned": false, "generation": 5}', "generation: appears twice"),
        (
            b'{"generation": 2, "cordoned": false}',
            "generation 2 is not above the node's 3: stale, ignored; the node stays cordoned",
        ),
        (b'{"generation": 3, "cordoned": false}', "generation 3 is not above the node's 3"),
        (b'{"generation": "4", "cordoned": false}', "generation: Input should be a valid integer"),
        (b'{"generation": 4.0, "cordoned": false}', "generation: Input should be a valid integer"),
        (b'{"generation": true, "cordoned": false}', "generation: Input should be a valid integer"),
        (b'{"generation": 0, "cordoned": false}', "generation: Input should be greater than or equal to 1"),
        (b'{"generation": 1e999, "cordoned": false}', "generation"),
        (b'{"cordoned": false}', "generation: Field required"),
        (b'{"generation": 4}', "cordoned: Field required"),
        (b'{"generation": 4, "cordoned": "false"}', "cordoned: Input should be a valid boolean"),
        (b'{"generation": 4, "cordoned": 0}', "cordoned: Input should be a valid boolean"),
        (b'{"generation": 4, "cordoned": null}', "cordoned: Input should be a valid boolean"),
        (b'{"generation": 4, "cordoned": false, "reason": "maintenance"}', "reason: unknown field"),
        (b'{"generation": 4, "cordoned": false}' + b" " * 5000, "over the limit of 4096"),
    ],
)
def test_a_bad_control_document_is_rejected_and_changes_nothing(payload: bytes, reason: str) -> None:
    new, reported = on_control(CORDONED_AT_3, parse_control(payload))
    assert reported is not None
    assert reason in reported, reported
    assert (new.generation, new.cordoned) == (3, True)


def test_generations_order_control_documents() -> None:
    control, reason = on_control(NodeControl(), parse_control(b'{"generation": 1, "cordoned": true}'))
    assert (control, reason) == (NodeControl(generation=1, cordoned=True), None)
    same, reason = on_control(control, parse_control(b'{"cordoned": true, "generation": 1}'))
    assert (same, reason) == (control, None), "the document in force again, however written: quiet"
    uncordoned, reason = on_control(control, parse_control(b'{"generation": 7, "cordoned": false}'))
    assert (uncordoned, reason) == (NodeControl(generation=7, cordoned=False), None)
    stale, reason = on_control(uncordoned, parse_control(b'{"generation": 6, "cordoned": true}'))
    assert reason is not None
    assert (stale.generation, stale.cordoned) == (7, False)
    again, reason = on_control(stale, parse_control(b'{"generation": 6, "cordoned": true}'))
    assert (again, reason) == (stale, None), "a rejected payload delivered again is reported once"

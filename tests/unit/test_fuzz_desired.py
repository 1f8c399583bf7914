"""Fuzzed desired payloads (tests/support/fuzz.py) through the parser and the pure core.

Whatever arrives on a desired topic: ``parse_desired`` never raises and says Accepted, Rejected (with a
reason naming a field or the payload) or Deleted; an accepted document reads back the same from its own
JSON and holds nothing exec would refuse; and ``decide`` fed the result, from nothing or from a running
execution, never raises, leaves a running workload alone on a rejection, and yields only states the store
can write and read back and documents that are strict JSON in UTF-8.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.actions import PublishStatus, Signal, Spawn
from agent.core.clock import Now
from agent.core.events import DesiredReceived, Event, ProcessStarted, TimerFired
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.timers import Timer
from agent.executors.cgroups import Containment
from agent.executors.process import ProcessExecutor
from agent.intake import to_event
from agent.protocol import (
    Accepted,
    Deleted,
    DesiredDocument,
    Parsed,
    Rejected,
    dumps,
    parse_desired,
)
from tests.support import fuzz

NODE = "node-1"
EID = "fuzz-1"
T0 = 1_800_000_000.0
MAX_BYTES = 262_144  # the default limits.max_payload_bytes

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

NO_CGROUPS = Containment(kind="process-group", reason="a unit test makes no cgroups")


def parse(payload: bytes) -> Parsed:
    return parse_desired(EID, payload, MAX_BYTES)


def top_level_keys(payload: bytes) -> set[str]:
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        return set()
    return set(raw) if isinstance(raw, dict) else set()


def names_a_field_or_the_payload(reason: str, payload: bytes) -> bool:
    """Each problem of the reason starts with what it is about: the payload, or a field's dotted path."""
    fields = {*fuzz.FIELDS, *top_level_keys(payload)}
    if reason.startswith(("payload ", "(document)")):
        return True
    return any(reason.startswith(f) and reason[len(f) : len(f) + 1] in (".", "[", ":", " ") for f in fields)


def check_parsed(payload: bytes, parsed: Parsed) -> None:
    assert isinstance(parsed, Accepted | Rejected | Deleted)
    if isinstance(parsed, Deleted):
        assert payload == b""
    elif isinstance(parsed, Rejected):
        assert parsed.reason.strip(), "a rejection says why"
        assert names_a_field_or_the_payload(parsed.reason, payload), parsed.reason
        assert parsed.generation is None or (type(parsed.generation) is int and parsed.generation >= 1)
    else:
        check_accepted(parsed.document)


def check_accepted(document: DesiredDocument) -> None:
    # Round trip: the document's own JSON (as the store writes it) reads back as the same document.
    again = parse(document.model_dump_json().encode())
    assert isinstance(again, Accepted), again
    assert again.document == document
    # Nothing that exec, chdir or a probe would refuse (agent/exec_limits.py) gets past the parser.
    spec = document.spec
    if spec is not None:
        strings = [*spec.command, *spec.env, *spec.env.values(), spec.working_dir or "/"]
        if spec.probe is not None and spec.probe.exec is not None:
            strings += spec.probe.exec.command
        assert not any("\0" in s for s in strings), strings
        assert all(name and "=" not in name for name in spec.env), spec.env
        assert spec.working_dir is None or spec.working_dir.startswith("/")


# --- The parser -------------------------------------------------------------------------------------------


@FUZZ
@given(fuzz.desired_payloads(EID))
def test_parse_desired_never_raises_and_always_answers(payload: bytes) -> None:
    check_parsed(payload, parse(payload))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_raw_bytes_are_answered(payload: bytes) -> None:
    check_parsed(payload, parse(payload))


def test_a_seeded_corpus_as_the_benchmark_sends_it() -> None:
    """The bench's own generator (bench/fuzz.py), 3,000 payloads: quicker to reach the rare cases."""
    rng = random.Random(9)
    for _ in range(3000):
        payload = fuzz.fuzz_payload(rng, EID)
        check_parsed(payload, parse(payload))


def document_text(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "execution_id": EID,
        "generation": 1,
        "desired_state": {"state_type": "running"},
        "spec": {"command": ["sleep", "1"]},
    }
    return {**document, **overrides}


def details_nested(depth: int) -> str:
    return '{"execution_id":"fuzz-1","generation":1,"spec":{"command":["true"]},"desired_state":' + (
        '{"state_type":"running","details":' + '{"a":' * depth + "1" + "}" * depth + "}}"
    )


# payload -> words the reason must hold, the generation it reports. Each of these was accepted (or raised)
# before agent/strict_json.py.
STRICT_JSON: dict[str, tuple[str, str, int | None]] = {
    "duplicate-key": (
        '{"execution_id":"fuzz-1","generation":1,"generation":2}',
        "generation: appears twice",
        None,
    ),
    "duplicate-nested": (
        json.dumps(document_text())[:-1] + ',"desired_state":{"state_type":"stopped"}}',
        "desired_state: appears twice",
        1,
    ),
    "nan": (
        json.dumps(document_text(desired_state={"state_type": "running", "details": {"x": float("nan")}})),
        "desired_state.details.x: NaN",
        1,
    ),
    "infinity": ('{"generation": -Infinity}', "generation: -Infinity", None),
    "float-overflow": (json.dumps(document_text())[:-1] + ',"x":1e999}', "x: the number 1e999 is beyond", 1),
    "5000-digits": ('{"generation":' + "9" * 5000 + "}", "has 5000 digits", None),
    "lone-surrogate": (
        json.dumps(document_text(desired_state={"state_type": "running", "message": "\ud800"})),
        "desired_state.message: holds a lone surrogate",
        1,
    ),
    "lone-surrogate-key": ('{"\\udfff": 1}', "lone surrogate", None),
    "deep-details": (details_nested(70), "nests more than 64", 1),
    "deep-list": ('{"a":' + "[" * 80 + "]" * 80 + "}", "a[0][0]: nests more than 64", None),
}


@pytest.mark.parametrize("name", list(STRICT_JSON))
def test_json_the_agent_could_not_keep_is_rejected_naming_why(name: str) -> None:
    text, words, generation = STRICT_JSON[name]
    parsed = parse(text.encode())
    assert isinstance(parsed, Rejected), parsed
    assert parsed.reason.startswith("payload is not JSON we accept: "), parsed.reason
    assert words in parsed.reason
    assert parsed.generation == generation


def test_nesting_that_is_no_trouble_is_accepted() -> None:
    parsed = parse(details_nested(60).encode())
    assert isinstance(parsed, Accepted), parsed
    check_accepted(parsed.document)


@pytest.mark.parametrize("execution_id", [".", ".."])
def test_an_accepted_execution_id_names_a_directory_of_its_own(execution_id: str, tmp_path: Path) -> None:
    document = json.dumps(document_text(execution_id=execution_id)).encode()
    if isinstance(parse_desired(execution_id, document, MAX_BYTES), Accepted):
        executor = ProcessExecutor(tmp_path, NO_CGROUPS)
        assert executor.run_dir(execution_id).resolve().parent == executor.root.resolve()


# --- The core ----------------------------------------------------------------------------------------------


def _running() -> Execution:
    document = parse(
        json.dumps(document_text(spec={"command": ["sleep", "600"], "validation": {"window_s": 1}})).encode()
    )
    assert isinstance(document, Accepted)
    state: Execution | Absent = Absent(execution_id=EID, node_id=NODE)
    ref = ProcessRef(attempt=1, pid=4242, started=1.0, supervisor_pid=4241, supervisor_started=1.0)
    events: list[tuple[float, Event]] = [
        (T0, DesiredReceived(document.document, document.digest)),
        (T0 + 1, ProcessStarted(ref)),
        (T0 + 3, TimerFired(Timer.WINDOW)),
    ]
    for now, event in events:
        state, _ = decide(state, event, Now(now, now))
    assert isinstance(state, Execution)
    assert state.state_type == "running"
    return state


RUNNING = _running()


def check_decision(before: Execution | Absent, payload: bytes) -> None:
    parsed = parse(payload)
    after, actions = decide(before, to_event(parsed), Now(T0 + 10, T0 + 10))
    assert isinstance(after, Execution | Absent)
    published = [a for a in actions if isinstance(a, PublishStatus)]
    assert [p.revision for p in published] == list(
        range(before.revision + 1, before.revision + 1 + len(published))
    )
    for p in published:
        dumps(p.document).decode("utf-8")
        json.dumps(p.document, allow_nan=False)  # strict JSON on the wire
    if isinstance(after, Execution):
        # what the store writes, it reads back the same
        assert Execution.model_validate_json(after.model_dump_json()) == after
    if isinstance(parsed, Rejected) and isinstance(before, Execution) and before.process is not None:
        assert not any(isinstance(a, Signal | Spawn) for a in actions), "a rejection never touches a workload"
        assert isinstance(after, Execution)
        assert after.process == before.process
        assert after.state_type == before.state_type
    if isinstance(parsed, Rejected) and isinstance(before, Absent):
        assert isinstance(after, Execution)
        assert after.state_type == "failed"
        assert len(published) == 1


@FUZZ
@given(fuzz.desired_payloads(EID))
def test_decide_from_nothing_never_raises(payload: bytes) -> None:
    check_decision(Absent(execution_id=EID, node_id=NODE, revision=3), payload)


@FUZZ
@given(fuzz.desired_payloads(EID))
def test_decide_leaves_a_running_workload_alone_on_a_rejection(payload: bytes) -> None:
    check_decision(RUNNING, payload)

"""The wire contract of PROTOCOL.md as parsed by agent.protocol: desired documents, topics, times.

``parse_desired`` must never raise: every bad input becomes a ``Rejected`` whose reason names the field.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.names import id_problem
from agent.protocol import (
    Accepted,
    Deleted,
    DesiredDocument,
    Parsed,
    Rejected,
    Topics,
    dumps,
    parse_desired,
    payload_digest,
    rfc3339,
)

EID = "web-2"
LIMIT = 256 * 1024

# The example document of PROTOCOL.md, verbatim.
EXAMPLE: dict[str, Any] = {
    "execution_id": "web-2",
    "job_id": "web",
    "generation": 3,
    "desired_state": {"state_type": "running", "message": "roll out v2", "details": {}},
    "previous_execution_id": "web-1",
    "spec": {
        "engine": "process",
        "command": ["/usr/bin/python3", "-m", "http.server", "8080"],
        "env": {"PYTHONUNBUFFERED": "1"},
        "working_dir": None,
        "restart": {"policy": "on-failure", "max_restarts": 3, "backoff_s": 1.0, "backoff_max_s": 60.0},
        "validation": {"window_s": 10.0, "deadline_s": 300.0},
        "probe": {
            "http": {"url": "http://127.0.0.1:8080/"},
            "period_s": 2.0,
            "timeout_s": 1.0,
            "failure_threshold": 3,
        },
        "stop": {"signal": "SIGTERM", "grace_s": 10.0},
        "update_strategy": "stop_first",
        "timeout_s": None,
        "publisher": None,
    },
}


def minimal(**fields: Any) -> dict[str, Any]:
    """The smallest valid running document, with ``fields`` replacing top-level keys."""
    doc: dict[str, Any] = {
        "execution_id": EID,
        "generation": 1,
        "desired_state": {"state_type": "running"},
        "spec": {"command": ["/bin/true"]},
    }
    doc.update(fields)
    return doc


def with_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with the dotted ``path`` set to ``value`` (intermediate maps created)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def parse(doc: Any, execution_id: str = EID, max_bytes: int = LIMIT) -> Parsed:
    payload = doc if isinstance(doc, bytes) else encode(doc)
    return parse_desired(execution_id, payload, max_bytes)


def rejected(doc: Any, execution_id: str = EID, max_bytes: int = LIMIT) -> Rejected:
    result = parse(doc, execution_id, max_bytes)
    assert isinstance(result, Rejected), result
    assert result.reason
    return result


def accepted(doc: Any, execution_id: str = EID) -> DesiredDocument:
    result = parse(doc, execution_id)
    assert isinstance(result, Accepted), result
    return result.document


# --- Unreadable payloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"{", b"\xff\xfe\x00", b"garbage", b'{"generation": 1,}'],
    ids=["bad-token", "truncated", "not-utf8", "bare-word", "trailing-comma"],
)
def test_not_json_is_rejected_unread(payload: bytes) -> None:
    result = rejected(payload)
    assert result.generation is None
    assert "not JSON" in result.reason
    assert result.digest == payload_digest(payload)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"[]", "list"),
        (b'[{"generation": 1}]', "list"),
        (b'"x"', "str"),
        (b"3", "int"),
        (b"1.5", "float"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
    ids=["empty-list", "list-of-doc", "string", "int", "float", "null", "bool"],
)
def test_json_that_is_not_an_object_is_rejected(payload: bytes, kind: str) -> None:
    result = rejected(payload)
    assert result.generation is None
    assert "not an object" in result.reason
    assert kind in result.reason


def test_payload_over_the_limit_is_rejected_unread() -> None:
    payload = encode(minimal())
    result = rejected(payload, max_bytes=len(payload) - 1)
    assert result.generation is None  # not even the generation is read
    assert "limit" in result.reason
    assert str(len(payload) - 1) in result.reason
    # At exactly the limit it is fine.
    assert isinstance(parse(payload, max_bytes=len(payload)), Accepted)


def test_payload_over_the_limit_is_rejected_even_when_not_json() -> None:
    result = rejected(b"x" * 100, max_bytes=99)
    assert "limit" in result.reason


def test_empty_payload_is_a_deletion() -> None:
    assert isinstance(parse_desired(EID, b"", LIMIT), Deleted)
    assert isinstance(parse_desired(EID, b"", 0), Deleted)


# --- Field validation -------------------------------------------------------------------------------------


def test_execution_id_must_match_the_topic() -> None:
    result = rejected(minimal(generation=4), execution_id="web-3")
    assert "execution_id" in result.reason
    assert "web-3" in result.reason
    assert result.generation == 4


BAD_IDS = ["a/b", "a+b", "a#b", "a b", "x" * 129, ""]
BAD_ID_NAMES = ["slash", "plus", "hash", "space", "129-chars", "empty"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=BAD_ID_NAMES)
@pytest.mark.parametrize("field", ["execution_id", "job_id", "previous_execution_id"])
def test_bad_ids_are_rejected_naming_the_field(field: str, bad: str) -> None:
    # The topic carries the same bad id, so the mismatch check is not what rejects it.
    topic_id = bad if field == "execution_id" else EID
    doc = minimal(execution_id=topic_id)
    doc[field] = bad
    result = rejected(doc, execution_id=topic_id)
    assert re.search(rf"(^|; ){field}: ", result.reason), result.reason


@pytest.mark.parametrize("good", ["a", "x" * 128, "A.b_c-9", "0"], ids=["one", "128-chars", "mixed", "digit"])
def test_good_ids_are_accepted(good: str) -> None:
    doc = accepted(minimal(execution_id=good, job_id=good, previous_execution_id=good), execution_id=good)
    assert doc.execution_id == good
    assert doc.job == good


@pytest.mark.parametrize(
    "generation",
    [0, -1, "3", 1.5, 1.0, True, False, None, [1], {"n": 1}],
    ids=["zero", "negative", "string", "fraction", "float-integral", "true", "false", "null", "list", "map"],
)
def test_bad_generation_is_rejected_naming_it(generation: Any) -> None:
    result = rejected(minimal(generation=generation))
    assert result.reason.startswith("generation: ")
    assert result.generation is None


def test_missing_generation_is_rejected() -> None:
    doc = minimal()
    del doc["generation"]
    result = rejected(doc)
    assert "generation: " in result.reason
    assert result.generation is None


@pytest.mark.parametrize("field", ["execution_id", "desired_state"])
def test_missing_required_fields_are_rejected(field: str) -> None:
    doc = minimal(generation=2)
    del doc[field]
    result = rejected(doc)
    assert f"{field}: " in result.reason
    assert result.generation == 2  # the generation is readable, so it is reported


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("bogus", "bogus"),
        ("desired_state.bogus", "desired_state.bogus"),
        ("spec.bogus", "spec.bogus"),
        ("spec.restart.bogus", "spec.restart.bogus"),
        ("spec.validation.bogus", "spec.validation.bogus"),
        ("spec.stop.bogus", "spec.stop.bogus"),
        ("spec.probe.grpc", "spec.probe.grpc"),
    ],
    ids=["top-level", "desired_state", "spec", "spec.restart", "spec.validation", "spec.stop", "spec.probe"],
)
def test_unknown_fields_are_rejected_naming_the_field(path: str, named: str) -> None:
    doc = with_path(minimal(generation=5), path, 1)
    if path.startswith("spec.probe"):
        doc["spec"]["probe"]["tcp"] = {"port": 80}
    result = rejected(doc)
    assert f"{named}: unknown field" in result.reason
    assert result.generation == 5


@pytest.mark.parametrize(
    ("command", "named"),
    [([], "spec.command"), ("ls -l", "spec.command"), (None, "spec.command"), ([1], "spec.command.0")],
    ids=["empty-list", "string", "null", "non-string-arg"],
)
def test_bad_command_is_rejected(command: Any, named: str) -> None:
    result = rejected(with_path(minimal(), "spec.command", command))
    assert f"{named}: " in result.reason


@pytest.mark.parametrize("state_type", ["running", "pending"])
def test_spec_is_required_unless_stopped(state_type: str) -> None:
    doc = minimal(desired_state={"state_type": state_type}, generation=7)
    del doc["spec"]
    result = rejected(doc)
    assert result.reason.startswith("spec: ")
    assert state_type in result.reason
    assert result.generation == 7


def test_stopped_needs_no_spec() -> None:
    doc = minimal(desired_state={"state_type": "stopped"})
    del doc["spec"]
    assert accepted(doc).spec is None


def test_stopped_with_a_spec_still_needs_a_valid_command() -> None:
    doc = with_path(minimal(desired_state={"state_type": "stopped"}), "spec.command", [])
    assert "spec.command" in rejected(doc).reason


@pytest.mark.parametrize(
    "probe",
    [
        {},
        {"period_s": 2.0},
        {"exec": {"command": ["true"]}, "http": {"url": "http://x/"}},
        {"http": {"url": "http://x/"}, "tcp": {"port": 80}},
        {"exec": {"command": ["true"]}, "http": {"url": "http://x/"}, "tcp": {"port": 80}},
    ],
    ids=["empty", "only-period", "exec+http", "http+tcp", "all-three"],
)
def test_probe_needs_exactly_one_kind(probe: dict[str, Any]) -> None:
    result = rejected(with_path(minimal(), "spec.probe", probe))
    assert result.reason.startswith("spec.probe: exactly one of")


def test_two_probe_kinds_are_listed() -> None:
    probe = {"exec": {"command": ["true"]}, "tcp": {"port": 80}}
    assert "(got exec, tcp)" in rejected(with_path(minimal(), "spec.probe", probe)).reason


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("desired_state.state_type", "paused"),
        ("desired_state.state_type", "completed"),
        ("desired_state.message", 3),
        ("spec.engine", "docker"),
        ("spec.env", {"A": 1}),
        ("spec.restart.policy", "sometimes"),
        ("spec.restart.max_restarts", -1),
        ("spec.restart.max_restarts", 1.5),
        ("spec.restart.backoff_s", -0.5),
        ("spec.restart.backoff_s", "1"),
        ("spec.validation.window_s", True),
        ("spec.validation.deadline_s", 0),
        ("spec.stop.signal", "SIGSEGV"),
        ("spec.stop.grace_s", -1),
        ("spec.update_strategy", "yolo"),
        ("spec.timeout_s", 0),
        ("spec.probe", {"tcp": {"port": 0}}),
        ("spec.probe", {"tcp": {"port": 65536}}),
        ("spec.probe", {"exec": {"command": []}}),
        ("spec.probe", {"http": {"url": "http://x/"}, "failure_threshold": 0}),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_bad_values_are_rejected_naming_the_field(path: str, value: Any) -> None:
    result = rejected(with_path(minimal(generation=3), path, value))
    assert path in result.reason, result.reason
    assert result.generation == 3


def test_several_problems_are_all_named() -> None:
    doc = with_path(minimal(bogus=1), "spec.restart.policy", "sometimes")
    reason = rejected(doc).reason
    assert "bogus: unknown field" in reason
    assert "spec.restart.policy: " in reason
    assert "; " in reason


# Numbers JSON can spell but no timer can hold.
@pytest.mark.parametrize(
    "literal",
    [
        "Infinity",
        "1e400",
        "1" + "0" * 400,
        "NaN",
        "-Infinity",
    ],
    ids=["Infinity", "1e400", "10**400", "NaN", "-Infinity"],
)
def test_non_finite_seconds_are_rejected(literal: str) -> None:
    payload = json.dumps(with_path(minimal(), "spec.validation.deadline_s", "@")).replace('"@"', literal)
    result = rejected(payload.encode())
    assert "spec.validation.deadline_s" in result.reason


@pytest.mark.parametrize(
    "payload", [b"[" * 100_000, b'{"a":' * 50_000], ids=["nested-lists", "nested-objects"]
)
def test_deeply_nested_json_is_rejected_not_raised(payload: bytes) -> None:
    assert len(payload) < LIMIT
    rejected(payload)


def test_digest_identifies_the_payload() -> None:
    one, two = encode(minimal(bogus=1)), encode(minimal(bogus=2))
    assert rejected(one).digest == rejected(one).digest == payload_digest(one)
    assert rejected(one).digest != rejected(two).digest
    result = parse(encode(minimal()))
    assert isinstance(result, Accepted)
    assert result.digest == payload_digest(encode(minimal()))


# --- Accepted documents and defaults ---------------------------------------------------------------------


def test_the_protocol_example_is_accepted_as_written() -> None:
    doc = accepted(EXAMPLE)
    dumped = doc.model_dump(mode="json")
    # The probe model holds every kind, the unused ones as null.
    assert dumped["spec"]["probe"].pop("exec") is None
    assert dumped["spec"]["probe"].pop("tcp") is None
    assert dumped["spec"].pop("resources") is None  # optional, and not in the example
    assert dumped == EXAMPLE


def test_defaults_are_those_of_the_protocol() -> None:
    doc = accepted(minimal())
    assert doc.job_id is None
    assert doc.job == EID  # job_id defaults to the execution id
    assert doc.previous_execution_id is None
    assert doc.desired_state.message == ""
    assert doc.desired_state.details == {}
    spec = doc.spec
    assert spec is not None
    assert spec.engine == "process"
    assert spec.env == {}
    assert spec.working_dir is None
    assert spec.timeout_s is None
    assert spec.probe is None
    assert spec.update_strategy == "stop_first"
    assert spec.restart.model_dump() == {
        "policy": "on-failure",
        "max_restarts": 3,
        "backoff_s": 1.0,
        "backoff_max_s": 60.0,
    }
    assert spec.validation.model_dump() == {"window_s": 10.0, "deadline_s": 300.0}
    assert spec.stop.model_dump() == {"signal": "SIGTERM", "grace_s": 10.0}


def test_probe_defaults() -> None:
    spec = accepted(with_path(minimal(), "spec.probe", {"tcp": {"port": 8080}})).spec
    assert spec is not None
    assert spec.probe is not None
    assert spec.probe.tcp is not None
    assert spec.probe.tcp.host == "127.0.0.1"
    assert (spec.probe.period_s, spec.probe.timeout_s, spec.probe.failure_threshold) == (2.0, 1.0, 3)


def test_integers_are_fine_seconds() -> None:
    spec = accepted(with_path(minimal(), "spec.validation", {"window_s": 0, "deadline_s": 5})).spec
    assert spec is not None
    assert spec.validation.window_s == 0
    assert spec.validation.deadline_s == 5


@pytest.mark.parametrize(
    "details",
    [
        {"any key": 1, "x/y#+": None, "": [1, {"deep": {"er": True}}]},
        {"bogus": {"unknown": "fields are fine here"}},
        {"rejected": "even names the agent uses"},
    ],
    ids=["odd-keys", "nested", "reserved-name"],
)
def test_details_maps_accept_any_keys(details: dict[str, Any]) -> None:
    doc = accepted(minimal(desired_state={"state_type": "running", "message": "m", "details": details}))
    assert doc.desired_state.details == details


def test_null_for_optional_fields_is_accepted() -> None:
    doc = accepted(minimal(job_id=None, previous_execution_id=None))
    assert doc.job == EID


# --- Never raises ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["execution_id", "job_id", "generation", "desired_state", "spec", "previous_execution_id", "bogus"]
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_parse_never_raises_on_bytes(payload: bytes) -> None:
    assert isinstance(parse_desired(EID, payload, LIMIT), Accepted | Rejected | Deleted)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6))
def test_parse_never_raises_on_json_objects(doc: dict[str, Any]) -> None:
    result = parse(doc)
    assert isinstance(result, Accepted | Rejected)
    if isinstance(result, Rejected):
        assert result.reason


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(
        [
            "desired_state",
            "desired_state.state_type",
            "spec",
            "spec.command",
            "spec.restart",
            "spec.restart.max_restarts",
            "spec.validation.window_s",
            "spec.probe",
            "spec.probe.http",
            "spec.stop.signal",
            "spec.env",
        ]
    ),
    JSON_VALUES,
)
def test_parse_never_raises_on_mutated_documents(path: str, value: Any) -> None:
    result = parse(with_path(minimal(), path, value))
    assert isinstance(result, Accepted | Rejected)
    if isinstance(result, Rejected):
        assert path.split(".", maxsplit=1)[0] in result.reason


# --- Times --------------------------------------------------------------------------------------------------

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_rfc3339_format() -> None:
    epoch = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC).timestamp()
    assert rfc3339(epoch) == "2026-11-22T10:00:00.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000Z"


def test_rfc3339_of_an_unset_time_is_none() -> None:
    assert rfc3339(None) is None


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_rfc3339_always_has_microseconds_and_z(epoch: float) -> None:
    text = rfc3339(epoch)
    assert text is not None
    assert RFC3339.match(text), text
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - epoch) < 1e-5


def test_rfc3339_keeps_a_bounded_cache() -> None:
    """Cached for the statuses rendered several times per decision; bounded, so it never grows the agent."""
    for i in range(10_000):
        assert rfc3339(1_764_660_000 + i / 7) == datetime.fromtimestamp(
            1_764_660_000 + i / 7, tz=UTC
        ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    info = rfc3339.cache_info()
    assert info.maxsize is not None
    assert info.currsize <= info.maxsize


def test_dumps_is_compact_json() -> None:
    assert dumps({"a": 1, "b": [None, "x"]}) == b'{"a":1,"b":[null,"x"]}'


# --- Topics ------------------------------------------------------------------------------------------------


@pytest.fixture
def topics() -> Topics:
    return Topics("reconcile/v1", "node-1")


def test_topic_names(topics: Topics) -> None:
    assert topics.desired_filter == "reconcile/v1/nodes/node-1/executions/+/desired"
    assert topics.node_status == "reconcile/v1/nodes/node-1/status"
    assert topics.events == "reconcile/v1/nodes/node-1/events"
    assert topics.status("web-2") == "reconcile/v1/nodes/node-1/executions/web-2/status"
    assert topics.desired("web-2") == "reconcile/v1/nodes/node-1/executions/web-2/desired"


def test_execution_of_own_desired_topic(topics: Topics) -> None:
    assert topics.execution_of_desired(topics.desired("web-2")) == "web-2"
    assert topics.execution_of_desired("reconcile/v1/nodes/node-1/executions/a.b_c-9/desired") == "a.b_c-9"


@pytest.mark.parametrize(
    "topic",
    [
        "reconcile/v1/nodes/node-2/executions/web-2/desired",
        "reconcile/v1/nodes/node-10/executions/web-2/desired",
        "reconcile/v1/nodes/node/executions/web-2/desired",
        "reconcile/v1/nodes/node-1/executions/web-2/x/desired",
        "reconcile/v1/nodes/node-1/executions/web-2/desired/more",
        "reconcile/v1/nodes/node-1/executions/web-2/status",
        "reconcile/v1/nodes/node-1/status",
        "reconcile/v2/nodes/node-1/executions/web-2/desired",
        "reconcile/v10/nodes/node-1/executions/web-2/desired",
        "other/reconcile/v1/nodes/node-1/executions/web-2/desired",
        "",
    ],
    ids=[
        "other-node",
        "node-prefix-of-other",
        "node-suffix-of-other",
        "deeper",
        "after-desired",
        "status-topic",
        "node-status",
        "other-prefix",
        "prefix-of-prefix",
        "nested-prefix",
        "empty",
    ],
)
def test_execution_of_other_topics_is_none(topics: Topics, topic: str) -> None:
    assert topics.execution_of_desired(topic) is None


@pytest.mark.parametrize(
    "topic",
    ["reconcile/v1/nodes/node-1/executions//desired", "reconcile/v1/nodes/node-1/executions/desired"],
    ids=["empty-segment", "no-segment"],
)
def test_execution_of_desired_without_a_segment_is_no_valid_id(topics: Topics, topic: str) -> None:
    # Returns "" today (the daemon then rejects it through id_problem); never a usable id.
    result = topics.execution_of_desired(topic)
    assert result is None or id_problem(result) is not None

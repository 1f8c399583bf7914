"""The operator CLI's pure parts: apply files, generations, outcomes, the job state rule, rendering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.exit_codes import EXIT_USAGE
from agent.operator.documents import load_files
from agent.operator.errors import OperatorError
from agent.operator.generations import desired_generation, next_generation
from agent.operator.jobs import job_state, job_state_type
from agent.operator.live import event_line
from agent.operator.outcome import outcome
from agent.operator.render import format_age, table
from agent.operator.session import Incoming
from agent.operator.snapshot import fold
from agent.operator.status import ExecutionView, parse_status
from agent.protocol import FleetTopics, Where

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
TOPICS = FleetTopics("reconcile/v1")


def status_doc(
    state: str = "running",
    revision: int = 1,
    generation: int = 1,
    *,
    stable: bool = False,
    job: str = "web",
    created: datetime = T0,
    updated: datetime = T0,
    rejected: dict[str, Any] | None = None,
    exit_code: int | None = None,
    message: str = "",
    timeout_at: datetime | None = None,
) -> dict[str, Any]:
    details: dict[str, Any] = {"rejected": rejected} if rejected else {}
    if timeout_at is not None:
        details["timeout_at"] = timeout_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "execution_id": "x",
        "job_id": job,
        "node_id": "n",
        "revision": revision,
        "observed_generation": generation,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "stable_at": "2026-11-22T10:00:01.000000Z" if stable else None,
        "desired_state": {"state_type": "running", "message": "", "details": {}},
        "observed_state": {"state_type": state, "message": message, "details": {}},
        "restart_count": 0,
        "run_output": {"exit_code": exit_code},
        "details": details,
    }


def view(node: str = "n", execution: str = "x", **fields: Any) -> ExecutionView:
    parsed = parse_status(json.dumps(status_doc(**fields)).encode(), node, execution)
    assert parsed is not None
    return parsed


# --- apply files ----------------------------------------------------------------------------------------

RUNNING = """\
node_id: node-1
execution_id: web-2
job_id: web
desired_state: {state_type: running, message: roll out v2}
spec:
  command: [sleep, "300"]
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problem(paths: list[str]) -> str:
    with pytest.raises(OperatorError) as caught:
        load_files(paths)
    assert caught.value.exit_code == EXIT_USAGE
    assert "\n" not in caught.value.message
    return caught.value.message


def test_a_yaml_document_becomes_one_planned_execution_without_node_id(tmp_path: Path) -> None:
    [item] = load_files([write(tmp_path, "web.yaml", RUNNING)])
    assert (item.node_id, item.execution_id, item.desired_state) == ("node-1", "web-2", "running")
    document = item.document(7)
    assert list(document)[:2] == ["execution_id", "generation"]
    assert document["generation"] == 7
    assert "node_id" not in document
    assert document["spec"] == {"command": ["sleep", "300"]}  # as written: the agent fills defaults


def test_multi_document_yaml_lists_and_json_files(tmp_path: Path) -> None:
    second = RUNNING.replace("web-2", "web-3")
    multi = write(tmp_path, "multi.yaml", f"{RUNNING}---\n{second}---\n")
    as_list = write(
        tmp_path,
        "list.yaml",
        "- {node_id: n2, execution_id: a, desired_state: {state_type: stopped}}\n"
        "- {node_id: n2, execution_id: b, desired_state: {state_type: pending}, spec: {command: [x]}}\n",
    )
    as_json = write(
        tmp_path,
        "one.json",
        json.dumps({"node_id": "n3", "execution_id": "j", "desired_state": {"state_type": "stopped"}}),
    )
    items = load_files([multi, as_list, as_json])
    assert [i.name for i in items] == ["node-1/web-2", "node-1/web-3", "n2/a", "n2/b", "n3/j"]
    assert items[1].source.endswith("multi.yaml, document 2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RUNNING.replace("node_id: node-1\n", ""), "node_id: required"),
        (RUNNING.replace("node-1", "'node/1'"), "node_id: 'node/1' contains '/'"),
        (RUNNING.replace("node-1", "7"), "node_id: must be a string"),
        (RUNNING + "generation: 3\n", "generation: apply sets it"),
        (RUNNING + "bogus: 1\n", "bogus: unknown field"),
        (RUNNING.replace("command:", "comand:"), "spec.comand: unknown field"),
        (RUNNING.replace('  command: [sleep, "300"]\n', "  env: {}\n"), "spec.command: Field required"),
        (RUNNING.replace('spec:\n  command: [sleep, "300"]\n', ""), "spec: required when"),
        (RUNNING.replace("running,", "runing,"), "desired_state.state_type"),
        (RUNNING.replace("web-2", "'web 2'"), "execution_id"),
        (RUNNING + "  validation: {window_s: -1}\n", "spec.validation.window_s"),
        (RUNNING + "  probe: {tcp: {port: 1}, http: {url: x}}\n", "spec.probe: exactly one of"),
        (RUNNING + "job_id: again\n", "duplicate key 'job_id'"),
        ("node_id: [unclosed\n", "malformed YAML at line"),
        ("just a string\n", "must be a mapping, not a string"),
        ("# nothing\n", "no desired documents"),
    ],
)
def test_a_bad_document_names_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    message = problem([path])
    assert message.startswith(path)
    assert expected in message


def test_the_same_execution_twice_is_refused(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", RUNNING)
    b = write(tmp_path, "b.yaml", RUNNING)
    assert "node-1/web-2 is also in" in problem([a, b])


def test_a_document_over_the_agents_payload_limit_is_refused(tmp_path: Path) -> None:
    big = RUNNING + f"  env: {{BIG: {'x' * 2000}}}\n"
    with pytest.raises(OperatorError, match="over the limit of 1024"):
        load_files([write(tmp_path, "big.yaml", big)], max_payload_bytes=1024)


def test_json_files_refuse_duplicate_keys_and_unreadable_files_are_named(tmp_path: Path) -> None:
    assert "node_id: appears twice in one object" in problem(
        [write(tmp_path, "d.json", '{"node_id": "a", "node_id": "b"}')]
    )
    missing = str(tmp_path / "missing.yaml")
    assert problem([missing]) == f"{missing}: cannot read: no such file or directory"


def test_a_yaml_date_in_details_cannot_be_sent_as_json(tmp_path: Path) -> None:
    text = RUNNING.replace("message: roll out v2}", "details: {since: 2026-01-01}}")
    assert "cannot be written as JSON" in problem([write(tmp_path, "date.yaml", text)])


# --- generations and outcomes ---------------------------------------------------------------------------


def test_next_generation_is_one_above_everything_the_broker_shows() -> None:
    assert next_generation(None, None) == 1
    assert next_generation(None, b"") == 1
    assert next_generation(None, b'{"generation": 4}') == 5
    assert next_generation(view(generation=6), b'{"generation": 4}') == 7
    rejected = view(generation=2, rejected={"generation": 9, "reason": "r", "at": None})
    assert next_generation(rejected, b'{"generation": 3}') == 10
    for garbage in (b"not json", b"[1]", b'{"generation": "5"}', b'{"generation": true}', b"{"):
        assert desired_generation(garbage) == 0


@pytest.mark.parametrize(
    ("wanted", "fields", "ok"),
    [
        ("running", {"state": "validating", "generation": 3}, None),
        ("running", {"state": "running", "generation": 3}, None),  # not stable yet
        ("running", {"state": "running", "generation": 3, "stable": True}, True),
        ("running", {"state": "running", "generation": 2, "stable": True}, None),  # an older generation
        ("running", {"state": "completed", "generation": 3}, True),
        ("running", {"state": "failed", "generation": 3}, False),
        ("running", {"state": "lost", "generation": 3}, False),
        ("running", {"state": "degraded", "generation": 3, "stable": True}, None),
        ("stopped", {"state": "stopping", "generation": 3}, None),
        ("stopped", {"state": "stopped", "generation": 3}, True),
        ("pending", {"state": "pending", "generation": 3}, True),
        (
            "pending",
            {"state": "failed", "generation": 2, "rejected": {"generation": 3, "reason": "r"}},
            False,
        ),
    ],
)
def test_when_a_wait_is_over(wanted: str, fields: dict[str, Any], ok: bool | None) -> None:
    result = outcome(wanted, 3, view(**fields))
    assert (None if result is None else result.ok) is ok


def test_a_failure_says_why_once() -> None:
    failed = view(state="failed", generation=1, exit_code=3, message="exited with exit code 3")
    result = outcome("running", 1, failed)
    assert result is not None
    assert result.summary == "failed: exited with exit code 3"
    rejected = view(state="running", rejected={"generation": 1, "reason": "spec: fixed once started"})
    result = outcome("running", 1, rejected)
    assert result is not None
    assert result.summary == "rejected by the agent: spec: fixed once started"


# --- the job state --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], "pending"),
        (["pending"], "pending"),
        (["pending", "pending"], "pending"),
        (["starting"], "running"),
        (["validating", "pending"], "running"),
        (["running", "running"], "running"),
        (["running", "stopped"], "running"),  # an update: the old execution stopped, the new one runs
        (["running", "completed"], "running"),
        (["running", "degraded"], "degraded"),
        (["running", "failed"], "degraded"),  # a failed update that was rolled back, or one bad node
        (["validating", "lost"], "degraded"),
        (["stopping", "running"], "running"),
        (["stopping", "stopped"], "stopping"),
        (["pending", "completed"], "pending"),
        (["completed"], "completed"),
        (["completed", "completed"], "completed"),
        (["failed"], "failed"),
        (["failed", "failed"], "failed"),
        (["completed", "failed"], "failed"),
        (["lost"], "failed"),
        (["stopped"], "stopped"),
        (["stopped", "completed"], "stopped"),
        (["stopped", "failed"], "failed"),
        (["something-new"], "pending"),
    ],
)
def test_job_state_rule(states: list[str], expected: str) -> None:
    assert job_state_type(states) == expected


def test_job_state_folds_executions_of_that_job_only() -> None:
    later = T0 + timedelta(minutes=5)
    views = [
        view("n2", "web-2", state="running", generation=4, created=T0 + timedelta(seconds=30), updated=later),
        view("n1", "web-1", state="stopped", generation=2, created=T0, updated=T0 + timedelta(seconds=40)),
        view("n1", "db-1", state="failed", generation=9, job="db", created=T0 - timedelta(days=1)),
    ]
    state = job_state("web", views)
    assert [e.name for e in state.executions] == ["n1/web-1", "n2/web-2"]
    assert (state.state, state.version) == ("running", 4)
    assert (state.create_time, state.update_time) == (T0, later)
    assert job_state("none", views).executions == ()


def test_job_timeout_at_is_the_earliest_of_its_live_executions() -> None:
    soon, later = T0 + timedelta(minutes=1), T0 + timedelta(minutes=9)
    views = [
        view("n1", "a", state="running", timeout_at=later),
        view("n2", "b", state="validating", timeout_at=soon + timedelta(minutes=3)),
        view("n3", "c", state="completed", timeout_at=soon),  # finished: its timeout no longer applies
        view("n4", "d", state="running"),  # no timeout_s
    ]
    assert job_state("web", views).timeout_at == soon + timedelta(minutes=3)
    assert job_state("web", views[3:]).timeout_at is None


# --- reading statuses -----------------------------------------------------------------------------------


def test_fold_keeps_the_latest_revision_and_drops_deleted_executions() -> None:
    topic_a = TOPICS.status("n1", "a")
    topic_b = TOPICS.status("n1", "b")

    def message(topic: str, payload: dict[str, Any] | bytes) -> Incoming:
        return Incoming(topic, payload if isinstance(payload, bytes) else json.dumps(payload).encode(), True)

    views = fold(
        TOPICS,
        [
            message(topic_a, status_doc("running", 4)),
            message(topic_a, status_doc("starting", 2)),  # a late duplicate of an older revision
            message(topic_b, status_doc("running", 1)),
            message(topic_b, b""),  # deleted
            message(TOPICS.status("n1", "c"), b"not a status"),
            message(TOPICS.node_status("n1"), {"state": "online"}),
        ],
    )
    assert list(views) == [("n1", "a")]
    assert (views["n1", "a"].state, views["n1", "a"].revision) == ("running", 4)


def test_parse_status_tolerates_what_a_broker_may_hold() -> None:
    for payload in (b"", b"{", b"[]", b'{"revision": 1}', b'{"observed_state": {}, "revision": "1"}'):
        assert parse_status(payload, "n", "x") is None
    odd = parse_status(b'{"observed_state": {"state_type": 5}, "revision": 3, "details": []}', "n", "x")
    assert odd is not None
    assert (odd.state, odd.job_id, odd.created_at, odd.rejected_generation) == ("unknown", "x", None, None)


def test_topics_are_parsed_back() -> None:
    assert TOPICS.where(TOPICS.status("n1", "e")) == Where("execution_status", "n1", "e")
    assert TOPICS.where(TOPICS.desired("n1", "e")) == Where("desired", "n1", "e")
    assert TOPICS.where(TOPICS.node_status("n1")) == Where("node_status", "n1")
    assert TOPICS.where(TOPICS.events("n1")) == Where("events", "n1")
    for other in ("reconcile/v2/nodes/n1/status", "reconcile/v1/nodes/n1/x", TOPICS.fence("cli")):
        assert TOPICS.where(other) is None


# --- rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (0, "0s"),
        (5.9, "5s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (7300, "2h"),
        (86399, "23h"),
        (86400, "1d"),
        (10 * 86400 + 5, "10d"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_table_aligns_columns_without_trailing_blanks() -> None:
    text = table(("NODE", "STATE"), [["node-1", "running"], ["n2", "failed-long"]])
    assert text.splitlines() == ["NODE    STATE", "node-1  running", "n2      failed-long"]


def test_event_line() -> None:
    event = {
        "type": "restart",
        "node_id": "n1",
        "execution_id": "web-2",
        "at": "2026-11-22T10:00:12.000000Z",
        "exit_code": 1,
        "reason": "crashed",
    }
    assert event_line(event) == "10:00:12Z  n1  restart  web-2  exit_code=1 reason=crashed"
    assert event_line({"type": "agent_started", "node_id": "n1", "execution_id": None, "at": None}).endswith(
        "  n1  agent_started  -"
    )

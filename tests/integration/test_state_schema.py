"""The state survives an upgrade: versioned schema, migrations from every committed fixture, refusals.

Fixtures (tests/fixtures/state-schema-N, made by tests/fixtures/make_fixture.py with the agent of that
schema) are copied, opened by the current store, which migrates them, and run by the current agent.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from agent import schema
from agent.boot import boot_id, boot_time
from agent.store import Store, StoreError
from tests.support.agent import (
    AgentProcess,
    StatusLog,
    config_for,
    desired,
    desired_topic,
    kill_group,
    pid_of,
    running_agent,
    sleeper,
    state,
)
from tests.support.broker import Broker
from tests.support.mqtt import Probe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NODE = "fixture-node"  # the node id the fixtures were made with
FIXTURE_VERSIONS = sorted(
    int(path.name.removeprefix("state-schema-")) for path in FIXTURES.glob("state-schema-*")
)


def test_there_is_a_fixture_of_the_current_schema() -> None:
    assert FIXTURE_VERSIONS[-1] == schema.VERSION, "make one: tests/fixtures/make_fixture.py HEAD ..."


def fixture_copy(version: int, into: Path) -> Path:
    target = into / "state"
    shutil.copytree(FIXTURES / f"state-schema-{version}", target)
    return target


def raw(state_dir: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(state_dir / "agent.db") as db:
        return db.execute(query).fetchall()


def meta(state_dir: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw(state_dir, "SELECT key, value FROM meta")}


def test_a_new_state_starts_at_the_current_version_with_an_instance_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db", "node-1")
    store.close()
    found = meta(tmp_path)
    assert found["schema_version"] == str(schema.VERSION)
    assert found["boot_id"] == boot_id()
    assert len(found["instance_id"]) == 32
    again = Store(tmp_path / "agent.db", "node-1")
    assert again.instance_id == found["instance_id"], "the instance id is made once, with the state"
    again.close()


def test_schema_1_is_migrated_and_its_wall_clock_timers_keep_their_meaning(tmp_path: Path) -> None:
    state_dir = fixture_copy(1, tmp_path)
    before = {
        str(eid): json.loads(str(text))["timers"]
        for eid, text in raw(state_dir, "SELECT execution_id, state FROM executions")
    }
    assert before["window"], "the fixture has stored timers"
    assert before["backoff"], "the fixture has stored timers"
    store = Store(state_dir / "agent.db", NODE)
    executions = store.load()
    assert store.never_accepted("bad") is not None, "a rejected-only execution has its own table now"
    store.close()
    assert meta(state_dir)["schema_version"] == str(schema.VERSION)
    offset = time.time() - boot_time()
    del before["bad"]
    for eid, timers in before.items():
        deadlines = executions[eid].deadlines
        assert deadlines.keys() == timers.keys()
        for name, wall in timers.items():
            # The same wall-clock moment, now on the boot clock (the two reads are microseconds apart).
            assert abs(deadlines[name] + offset - wall) < 0.01, (eid, name)
    assert {eid: e.revision for eid, e in executions.items()} == {
        "done": 4,
        "failed": 4,
        "window": 3,
        "backoff": 4,
        "stopped": 6,
    }


def test_a_state_of_a_newer_agent_is_refused_naming_both_versions(tmp_path: Path, broker: Broker) -> None:
    Store(tmp_path / "state" / "agent.db", "node-1").close()
    with sqlite3.connect(tmp_path / "state" / "agent.db") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(schema.VERSION + 1),))
    with pytest.raises(StoreError, match=rf"schema version {schema.VERSION + 1}\b.*up to {schema.VERSION}\b"):
        Store(tmp_path / "state" / "agent.db", "node-1")
    agent = AgentProcess(broker, tmp_path, node_id="node-1")
    agent.start()
    assert agent.wait() == 2
    assert (
        f"written by a newer agent (state schema version {schema.VERSION + 1})" in agent.log_path.read_text()
    )
    assert meta(tmp_path / "state")["schema_version"] == str(schema.VERSION + 1), "left as it was"


def test_a_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = fixture_copy(1, tmp_path)
    before = raw(state_dir, "SELECT execution_id, state FROM executions ORDER BY execution_id")

    def broken(db: sqlite3.Connection, at: schema.Moment) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS[:2], broken))
    with pytest.raises(StoreError, match="disk I/O error"):
        Store(state_dir / "agent.db", NODE)
    assert raw(state_dir, "SELECT execution_id, state FROM executions ORDER BY execution_id") == before
    assert "schema_version" not in meta(state_dir)


@pytest.mark.parametrize("version", FIXTURE_VERSIONS)
async def test_the_agent_runs_on_every_fixture_state(
    tmp_path: Path, broker: Broker, probe: Probe, version: int
) -> None:
    state_dir = fixture_copy(version, tmp_path)
    await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
    window = StatusLog(probe, NODE, "window")
    gone = StatusLog(probe, NODE, "gone")
    async with running_agent(config_for(broker, state_dir, node_id=NODE)):
        # Killed while the agent was away: the supervisor's exit file of schema 1 gives the real code.
        ended = await window.wait_state("failed")
        assert ended["run_output"]["exit_code"] == 137
        assert ended["revision"] == 4
        # A deleted execution's high-water mark survived: created again, it continues from there.
        await probe.publish(desired_topic(NODE, "gone"), desired("gone", 2, command=sleeper()), retain=True)
        again = await gone.wait_state("running")
        kill_group(
            pid_of(again)
        )  # the one workload this test started (the fixture's pids are another machine's)
        assert gone.revisions()[0] == 7
        assert again["revision"] > 7
    assert meta(state_dir)["schema_version"] == str(schema.VERSION)


async def test_after_a_reboot_no_old_deadline_runs_and_a_pending_restart_is_due_at_once(
    tmp_path: Path, broker: Broker, probe: Probe
) -> None:
    state_dir = fixture_copy(1, tmp_path)
    Store(state_dir / "agent.db", NODE).close()  # migrated on this boot ...
    with sqlite3.connect(state_dir / "agent.db") as db:  # ... and made to look as of another one
        db.execute("UPDATE meta SET value = 'an-earlier-boot' WHERE key = 'boot_id'")
    await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
    backoff = StatusLog(probe, NODE, "backoff")
    async with running_agent(config_for(broker, state_dir, node_id=NODE)) as agent:
        # An hour of backoff was stored; on a new boot the restart comes at once (and fails again).
        await backoff.wait(lambda d: d["restart_count"] == 2, what="the second restart of backoff")
        window = agent.runtime.executions["window"]
        assert state(StatusLog(probe, NODE, "window").documents()[-1]) == "failed"
        assert window.deadlines == {}, "the window of the old boot was dropped, not resumed"
    assert meta(state_dir)["boot_id"] == boot_id()

"""The operator CLI as an operator runs it: ``python -m agent apply/get/job/watch/events/delete``.

Each command is a real subprocess against a real broker and real agents (in this test's event loop, so
they keep serving while the CLI runs). Live commands print a "watching"/"listening" line on stderr once
subscribed; the tests wait for that line instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent import (
    config_for,
    desired_topic,
    pid_alive,
    pid_of,
    running_agent,
    status_topic,
)
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Probe

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def broker_args(broker: Broker) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port)]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )


async def cli(*args: str) -> Result:
    proc = await start(*args)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode is not None
    result = Result(proc.returncode, stdout.decode(), stderr.decode())
    assert "Traceback" not in result.output, result.output
    return result


@asynccontextmanager
async def background(*args: str, ready: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A live command, yielded once it printed ``ready`` on stderr (it is subscribed); killed if left."""
    proc = await start(*args)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            while ready not in (line := (await proc.stderr.readline()).decode()):
                assert line, f"{args} ended before printing {ready!r}"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_until(stream: asyncio.StreamReader, text: str) -> str:
    """Lines from ``stream`` up to and including the first that contains ``text``."""
    seen = ""
    async with asyncio.timeout(CLI_TIMEOUT_S):
        while text not in seen:
            line = (await stream.readline()).decode()
            assert line, f"stream ended before {text!r}; got:\n{seen}"
            seen += line
    return seen


def spec(command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "command": command,
        "validation": {"window_s": 0.2, "deadline_s": 30.0},
        "restart": {"policy": "never"},
        "stop": {"grace_s": 2.0},
        **extra,
    }


def document(node: str, execution: str, command: list[str], job: str = "web", **extra: Any) -> dict[str, Any]:
    return {
        "node_id": node,
        "execution_id": execution,
        "job_id": job,
        "desired_state": {"state_type": "running", "message": "from a file"},
        "spec": spec(command, **extra),
    }


def write_yaml(path: Path, *documents: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


async def retained(broker: Broker, topic: str) -> dict[str, Any]:
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topic)
        message = await probe.wait_for_topic(topic)
    assert message.retain
    value: dict[str, Any] = message.json()
    return value


SLEEPER = ["sleep", "300"]


async def test_apply_waits_until_stable_and_a_second_apply_bumps_the_generation(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        first = await cli("apply", path, "--wait", *broker_args(broker))
        assert first.code == 0, first.output
        lines = first.stdout.splitlines()
        assert lines[0] == "node-1/web-1  generation 1 applied (desired running)"
        assert "node-1/web-1  starting -> validating (rev 3)" in lines
        assert "node-1/web-1  validating -> running (rev 4)" in lines
        assert lines[-1] == "node-1/web-1  ok: running, stable"
        status = await retained(broker, status_topic("node-1", "web-1"))
        assert (status["observed_state"]["state_type"], status["observed_generation"]) == ("running", 1)
        assert status["stable_at"] is not None
        pid = pid_of(status)

        again = await cli("apply", path, "--wait", *broker_args(broker))
        assert again.code == 0, again.output
        assert "node-1/web-1  generation 2 applied (desired running)" in again.stdout
        assert again.stdout.splitlines()[-1] == "node-1/web-1  ok: running, stable"
        published = await retained(broker, desired_topic("node-1", "web-1"))
        assert published["generation"] == 2
        assert "node_id" not in published
        assert published["desired_state"]["message"] == "from a file"
        status = await retained(broker, status_topic("node-1", "web-1"))
        assert status["observed_generation"] == 2
        assert pid_of(status) == pid  # the same workload: a new generation restarts nothing
        assert pid_alive(pid)


async def test_apply_of_a_failing_workload_exits_non_zero(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    # A window far longer than the workload lives: it fails in validation however slowly its exit is
    # reported on a loaded machine (a crash ends the window at once, so this is no slower).
    validation = {"window_s": 30.0, "deadline_s": 60.0}
    bad = document("node-1", "bad-1", ["sh", "-c", "exit 3"], job="bad", validation=validation)
    path = write_yaml(tmp_path / "bad.yaml", bad)
    async with running_agent(config_for(broker, state_dir)):
        result = await cli("apply", path, "--wait", "-o", "json", *broker_args(broker))
    assert result.code == 1, result.output
    assert "node-1/bad-1  FAILED: failed: exited with exit code 3" in result.stderr
    assert "reconcile-agent: 1 of 1 executions did not reach their desired state" in result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome == {
        "node_id": "node-1",
        "execution_id": "bad-1",
        "generation": 1,
        "desired_state": "running",
        "result": "failed",
        "summary": "failed: exited with exit code 3",
        "rollback": None,  # not an update
    }


async def test_apply_of_a_changed_spec_is_rejected_by_the_agent_and_exits_non_zero(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "web.yaml"
    async with running_agent(config_for(broker, state_dir)):
        write_yaml(path, document("node-1", "web-1", SLEEPER))
        assert (await cli("apply", str(path), "--wait", *broker_args(broker))).code == 0
        # Valid on its own, so only the agent can refuse it: an execution's spec is fixed once started.
        write_yaml(path, document("node-1", "web-1", ["sleep", "301"]))
        result = await cli("apply", str(path), "--wait", *broker_args(broker))
    assert result.code == 1, result.output
    assert "node-1/web-1  FAILED: rejected by the agent: " in result.stdout
    assert "previous_execution_id" in result.stdout  # the agent's reason says what to do instead


async def test_a_node_without_an_agent_is_named_and_its_document_can_still_be_deleted(
    broker: Broker, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-9", "web-1", SLEEPER))
    result = await cli("apply", path, "--wait", "--timeout", "0.5", *broker_args(broker))
    assert result.code == 1
    assert "reconcile-agent: node node-9 has never connected (no node status)" in result.stderr
    assert "node-9/web-1  TIMED OUT after 0.5s waiting for running" in result.stdout
    # The document stays retained for when the agent comes; delete finds it and clears it.
    assert (await retained(broker, desired_topic("node-9", "web-1")))["generation"] == 1
    deleted = await cli("delete", "--node", "node-9", "web-1", *broker_args(broker))
    assert deleted.code == 0, deleted.output
    assert deleted.stdout == "node-9/web-1  desired document cleared; no status to wait for\n"


async def test_delete_force_clears_at_once_and_the_agent_still_stops_it(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        pid = pid_of(await retained(broker, status_topic("node-1", "web-1")))
        result = await cli("delete", "--force", "--node", "node-1", "web-1", *broker_args(broker))
    assert result.code == 0, result.output
    assert result.stdout.splitlines() == ["node-1/web-1  desired document cleared", "node-1/web-1  deleted"]
    # The agent clears the status only once the supervisor has reaped the workload: no wait is needed here.
    assert not pid_alive(pid), f"workload {pid} still runs after the deletion; the CLI said:\n{result.output}"


async def test_get_lists_executions_as_a_table_and_as_json(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(
        tmp_path / "two.yaml",
        document("node-1", "web-1", SLEEPER),
        document("node-1", "once-1", ["true"], job="once"),
    )
    async with running_agent(config_for(broker, state_dir)):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        listed, as_json, one, other_node = await asyncio.gather(
            cli("get", *broker_args(broker)),
            cli("get", "-o", "json", "--node", "node-1", *broker_args(broker)),
            cli("get", "web-1", "--node", "node-1", *broker_args(broker)),
            cli("get", "--node", "node-9", *broker_args(broker)),
        )
    assert listed.code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NODE", "EXECUTION", "JOB", "STATE", "REVISION", "AGE", "STABLE", "RESTARTS"]
    assert [row.split()[:4] for row in rows] == [
        ["node-1", "once-1", "once", "completed"],
        ["node-1", "web-1", "web", "running"],
    ]
    assert rows[1].split()[6:] == ["yes", "0"]
    assert rows[1].split()[5].endswith("s")  # the age: seconds old
    documents = json.loads(as_json.stdout)
    assert [(d["execution_id"], d["observed_state"]["state_type"]) for d in documents] == [
        ("once-1", "completed"),
        ("web-1", "running"),
    ]
    assert len(one.stdout.splitlines()) == 2
    assert "web-1" in one.stdout.splitlines()[1]
    assert other_node.code == 0
    assert other_node.stdout == ""
    assert other_node.stderr.strip() == "No executions on node node-9."


async def test_job_gathers_its_executions_across_two_nodes(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(
        tmp_path / "fleet.yaml",
        document("node-1", "web-1", SLEEPER),
        document("node-2", "web-1", SLEEPER),
        document("node-2", "db-1", SLEEPER, job="db"),
    )
    async with (
        running_agent(config_for(broker, state_dir / "node-1", "node-1")),
        running_agent(config_for(broker, state_dir / "node-2", "node-2")),
    ):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        text = await cli("job", "web", *broker_args(broker))
        as_json = await cli("job", "web", "-o", "json", *broker_args(broker))
        missing = await cli("job", "nope", *broker_args(broker))
    assert text.code == 0, text.output
    assert "State:    running" in text.stdout
    assert "Version:  1" in text.stdout
    assert "Nodes:    2 (node-1, node-2)" in text.stdout
    rows = [line.split() for line in text.stdout.splitlines() if line.startswith("node-")]
    assert [row[:4] for row in rows] == [
        ["node-1", "web-1", "web", "running"],
        ["node-2", "web-1", "web", "running"],
    ]
    job = json.loads(as_json.stdout)
    assert (job["job_id"], job["state"], job["version"]) == ("web", "running", 1)
    assert [e["node_id"] for e in job["executions"]] == ["node-1", "node-2"]
    created = min(e["created_at"] for e in job["executions"])
    updated = max(e["updated_at"] for e in job["executions"])
    assert (job["create_time"], job["update_time"]) == (created, updated)
    assert missing.code == 1
    assert missing.stderr == "reconcile-agent: no executions of job 'nope' on any node\n"


async def test_delete_stops_then_clears_and_the_workload_is_gone(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        pid = pid_of(await retained(broker, status_topic("node-1", "web-1")))
        result = await cli("delete", "--node", "node-1", "web-1", *broker_args(broker))
        assert result.code == 0, result.output
        assert result.stdout.splitlines() == [
            "node-1/web-1  generation 2 applied (desired stopped)",
            "node-1/web-1  running -> stopping (rev 5)",
            "node-1/web-1  stopping -> stopped (rev 6)",
            "node-1/web-1  desired document cleared",
            "node-1/web-1  deleted",
        ]
        assert not pid_alive(pid)
        # Both retained topics are gone: the CLI no longer finds it anywhere.
        gone = await cli("get", "web-1", *broker_args(broker))
        assert (gone.code, gone.stderr) == (1, "reconcile-agent: no execution 'web-1' on any node\n")
        again = await cli("delete", "--node", "node-1", "web-1", *broker_args(broker))
        assert (again.code, again.stderr) == (1, "reconcile-agent: no execution 'web-1' on node node-1\n")


async def test_events_shows_new_events_until_count(broker: Broker, state_dir: Path, probe: Probe) -> None:
    async with running_agent(config_for(broker, state_dir)):
        args = ["events", "--type", "desired_rejected", "--count", "1", "--timeout", "30"]
        async with background(*args, "-o", "json", *broker_args(broker), ready="listening") as proc:
            await probe.publish(desired_topic("node-1", "junk"), b"not json", retain=True)
            stdout, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode == 0
        [line] = stdout.decode().splitlines()
        event = json.loads(line)
        assert (event["type"], event["node_id"], event["execution_id"]) == (
            "desired_rejected",
            "node-1",
            "junk",
        )

        async with background("events", "--count", "1", *broker_args(broker), ready="listening") as proc:
            await probe.publish(desired_topic("node-1", "junk2"), b"[]", retain=True)
            stdout, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode == 0
        assert "  node-1  desired_rejected  junk2  generation=null reason=" in stdout.decode()


async def test_events_that_do_not_arrive_in_time_exit_non_zero(broker: Broker) -> None:
    result = await cli("events", "--count", "1", "--timeout", "0.3", *broker_args(broker))
    assert result.code == 1
    assert result.stderr.splitlines()[-1] == "reconcile-agent: 0 of 1 events arrived within 0.3s"


async def test_watch_shows_the_current_table_then_changes_and_ends_quietly(
    broker: Broker, state_dir: Path, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        # Bounded by --timeout: the snapshot, then nothing happened, exit 0.
        bounded = await cli("watch", "--timeout", "0.3", *broker_args(broker))
        assert bounded.code == 0, bounded.output
        assert bounded.stdout.splitlines()[1].split()[:4] == ["node-1", "web-1", "web", "running"]
        # Live: a change elsewhere shows up as transitions; Ctrl-C ends it with exit 0.
        async with background("watch", *broker_args(broker), ready="watching") as proc:
            assert proc.stdout is not None
            deleted = await cli("delete", "--node", "node-1", "web-1", *broker_args(broker))
            assert deleted.code == 0, deleted.output
            seen = await read_until(proc.stdout, "node-1/web-1  deleted")
            proc.send_signal(signal.SIGINT)
            _, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr.decode()
        assert "node-1/web-1  running -> stopping (rev 5)" in seen
        assert "node-1/web-1  stopping -> stopped (rev 6)" in seen


async def test_watch_json_lines(broker: Broker, state_dir: Path, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        assert (await cli("apply", path, "--wait", *broker_args(broker))).code == 0
        result = await cli("watch", "-o", "json", "--timeout", "0.3", *broker_args(broker))
    assert result.code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_kind = {line["kind"]: line for line in lines}
    assert by_kind["node"]["status"]["state"] == "online"
    assert by_kind["execution"]["execution_id"] == "web-1"
    assert by_kind["execution"]["status"]["observed_state"]["state_type"] == "running"


async def test_ctrl_c_during_apply_wait_exits_130(broker: Broker, state_dir: Path, tmp_path: Path) -> None:
    slow = document("node-1", "slow-1", SLEEPER)
    slow["spec"]["validation"]["window_s"] = 120.0  # never stable within this test
    path = write_yaml(tmp_path / "slow.yaml", slow)
    async with running_agent(config_for(broker, state_dir)):
        proc = await start("apply", path, "--wait", *broker_args(broker))
        assert proc.stdout is not None
        await read_until(proc.stdout, "starting -> validating")
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode == 130
    assert "Traceback" not in stderr.decode()


async def test_the_broker_comes_from_the_config_file(broker: Broker, state_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump({"node_id": "node-1", "mqtt": {"host": broker.host, "port": broker.port}})
    )
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    async with running_agent(config_for(broker, state_dir)):
        applied = await cli("apply", path, "--wait", "--config", str(config))
        listed = await cli("get", "-c", str(config))
    assert applied.code == 0, applied.output
    assert "web-1" in listed.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {prot: 1}\n")
    result = await cli("get", "--config", str(bad))
    assert result.code == 2
    assert "mqtt.prot: unknown key" in result.stderr


# --- errors: one line, no traceback -----------------------------------------------------------------------


async def test_a_bad_file_exits_2_naming_the_field_and_publishes_nothing(
    broker: Broker, tmp_path: Path, probe: Probe
) -> None:
    good = write_yaml(tmp_path / "good.yaml", document("node-1", "web-1", SLEEPER))
    broken = document("node-1", "web-2", SLEEPER)
    broken["spec"]["restart"]["polcy"] = "never"
    bad = write_yaml(tmp_path / "bad.yaml", broken)
    result = await cli("apply", good, bad, *broker_args(broker))
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr == f"reconcile-agent: {bad}: spec.restart.polcy: unknown field\n"
    # The good file was not published either: every file is checked first. A fence on the probe shows it.
    await probe.subscribe(desired_topic("node-1", "+"))
    await probe.subscribe("fence")
    await probe.publish("fence", b"done")
    await probe.wait_for(lambda m: m.topic == "fence")
    assert not probe.messages_on(desired_topic("node-1", "+"))


async def test_an_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()
    commands = (["get"], ["watch"], ["delete", "--node", "n", "e"], ["events"], ["job", "j"])
    results = await asyncio.gather(*(cli(*args, "--port", str(port)) for args in commands))
    for args, result in zip(commands, results, strict=True):
        assert result.code == 1, (args, result.output)
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(f"reconcile-agent: cannot reach the broker at 127.0.0.1:{port}: "), line
    path = write_yaml(tmp_path / "web.yaml", document("node-1", "web-1", SLEEPER))
    result = await cli("apply", path, "--wait", "--port", str(port))
    assert result.code == 1
    assert len(result.stderr.splitlines()) == 1


async def test_unknown_executions_and_bad_arguments(broker: Broker) -> None:
    get = await cli("get", "nope", "--node", "node-1", *broker_args(broker))
    assert (get.code, get.stderr) == (1, "reconcile-agent: no execution 'nope' on node node-1\n")
    delete = await cli("delete", "--node", "node-1", "nope", *broker_args(broker))
    assert (delete.code, delete.stderr) == (1, "reconcile-agent: no execution 'nope' on node node-1\n")
    bad_id = await cli("get", "--node", "a/b", *broker_args(broker))
    assert bad_id.code == 2
    assert "argument --node: 'a/b' contains '/'" in bad_id.stderr
    missing = await cli("apply", "/no/such/file.yaml", *broker_args(broker))
    assert (missing.code, missing.stderr) == (
        2,
        "reconcile-agent: /no/such/file.yaml: cannot read: no such file or directory\n",
    )


@pytest.mark.parametrize(
    "command", ["apply", "get", "job", "nodes", "watch", "events", "delete", "cordon", "uncordon"]
)
async def test_every_command_has_help(command: str) -> None:
    result = await cli(command, "--help")
    assert result.code == 0
    assert "--host" in result.stdout
    assert "--config" in result.stdout

"""``apply --wait`` tells the whole story of a failed update (issue 14 item 7): not only that the new
execution failed, but whether the agent rolled back and which execution runs now.

A real agent on a real broker, real workloads; the CLI is a real subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_operator_cli import SLEEPER, broker_args, cli, document, write_yaml
from tests.support.agent import config_for, running_agent
from tests.support.broker import Broker

FAILING = ["sh", "-c", "exit 3"]


@pytest.mark.parametrize("strategy", ["stop_first", "start_first"])
async def test_a_failed_update_says_it_rolled_back_and_what_runs_now(
    broker: Broker, state_dir: Path, tmp_path: Path, strategy: str
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        web1 = write_yaml(tmp_path / "web-1.yaml", document("node-1", "web-1", SLEEPER))
        assert (await cli("apply", web1, "--wait", *broker_args(broker))).code == 0
        update = document("node-1", "web-2", FAILING, update_strategy=strategy)
        update["previous_execution_id"] = "web-1"
        # A window far longer than the workload lives: it fails before it is stable however loaded the machine.
        update["spec"]["validation"] = {"window_s": 60.0, "deadline_s": 120.0}
        web2 = write_yaml(tmp_path / "web-2.yaml", update)
        result = await cli("apply", web2, "--wait", *broker_args(broker))
        as_json = await cli(
            "apply",
            write_yaml(
                tmp_path / "web-3.yaml", {**update, "execution_id": "web-3", "previous_execution_id": "web-2"}
            ),
            "--wait",
            "-o",
            "json",
            *broker_args(broker),
        )
    assert result.code == 1, result.output
    last = result.stdout.splitlines()[-1]
    assert last == (
        "node-1/web-2  FAILED: failed: exited with exit code 3; rolled back: web-1 runs now (running, stable)"
    ), result.stdout
    if strategy == "stop_first":  # web-1 was stopped for the update and is seen coming back
        assert (
            "node-1/web-1  starting -> validating" in result.stdout
            or "node-1/web-1  validating -> running" in result.stdout
        ), result.stdout
    # web-3 updates web-2, which failed and was never stable: no rollback, and the output says what web-2 is.
    assert as_json.code == 1, as_json.output
    [outcome] = json.loads(as_json.stdout)
    assert outcome["result"] == "failed"
    assert outcome["rollback"] == {"to": "web-2", "happened": False, "state": "failed", "stable": False}
    assert "; no rollback: web-2 is failed" in as_json.stderr

"""The command line as an operator meets it: a real process, its exit status and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: RECONCILE_* variables from the developer's shell would change the outcome.
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECONCILE_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"reconcile-agent {agent.__version__}"


def test_the_console_script_prints_the_version() -> None:
    script = Path(sys.executable).parent / "reconcile-agent"
    if not script.exists():
        pytest.skip("the reconcile-agent script is not installed next to this interpreter")

    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0
    assert result.stdout.strip() == f"reconcile-agent {agent.__version__}"


def test_help_shows_an_example_for_each_command() -> None:
    result = run_cli("--help")

    assert result.returncode == 0
    assert "reconcile-agent run --config" in result.stdout
    assert "reconcile-agent check-config --config" in result.stdout


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node_id: n1\nstate_dir: /srv/state\nmqtt:\n  host: broker.local\n  port: 1884\n")

    result = run_cli("check-config", "--config", str(path))

    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout
    assert "n1" in result.stdout
    assert "broker.local:1884" in result.stdout
    assert "external" in result.stdout
    assert "/srv/state" in result.stdout
    assert result.stderr == ""


def test_check_config_on_the_shipped_files() -> None:
    dev = run_cli("check-config", "--config", "config/dev.yaml")
    example = run_cli(
        "check-config", "--config", "config/agent.example.yaml", env={"RECONCILE_NODE_ID": "n1"}
    )

    assert dev.returncode == 0, dev.stderr
    assert "dev-node" in dev.stdout
    assert "embedded" in dev.stdout
    assert example.returncode == 0, example.stderr


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node_id: n1\n")

    result = run_cli("check-config", "--config", str(path), env={"RECONCILE_MQTT__PORT": "1999"})

    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:1999" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node_id: n1\nmqtt:\n  prot: 1\n", "mqtt.prot: unknown key"),
        ('node_id: n1\nmqtt:\n  port: "1883"\n', "mqtt.port: should be a valid integer"),
        ("node_id: a/b\n", "node_id: node id 'a/b' contains '/'"),
        ("node_id: n1\nmqtt: [\n", "malformed YAML at line"),
        ("- a\n", "top level must be a mapping"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_bad_file_exits_2_with_a_message_and_no_traceback(
    tmp_path: Path, command: str, text: str, expected: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)

    result = run_cli(command, "--config", str(path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "nope.yaml"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope.yaml" in result.stderr
    assert "no such file" in result.stderr


def test_a_missing_referenced_file_fails_check_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"node_id: n1\nmqtt:\n  username: u\n  password_file: {tmp_path / 'pw'}\n")

    result = run_cli("check-config", "--config", str(path))

    assert result.returncode == 2
    assert "mqtt.password_file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["bogus"], ["check-config"], ["run", "--config"]])
def test_bad_usage_exits_2(args: list[str]) -> None:
    result = run_cli(*args)

    assert result.returncode == 2
    assert "usage: reconcile-agent" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141() -> None:
    # `reconcile-agent check-config ... | head -1`: a BrokenPipeError traceback used to follow.
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECONCILE_")}
    command = [sys.executable, "-m", "agent", "check-config", "--config", "config/agent.example.yaml"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean, cwd=REPO_ROOT
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()  # before the command writes a line
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 141
    assert stderr == b""

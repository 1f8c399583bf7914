"""The agent with its own embedded broker (`mqtt.embedded: true`): no external broker at all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.config import AgentConfig, LogConfig, MqttConfig
from tests.support.agent import (
    StatusLog,
    desired,
    desired_topic,
    node_topic,
    pid_alive,
    pid_of,
    running_agent,
    sleeper,
)
from tests.support.broker import free_port
from tests.support.mqtt import Probe
from tests.support.wait import wait_until, wait_until_sync

NODE = "solo"
REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def embedded_config(state_dir: Path, port: int) -> AgentConfig:
    return AgentConfig(
        node_id=NODE,
        state_dir=state_dir,
        mqtt=MqttConfig(host=HOST, port=port, embedded=True),
        log=LogConfig(format="console", level="debug"),
    )


async def test_an_agent_with_an_embedded_broker_runs_workloads_for_a_client(state_dir: Path) -> None:
    port = free_port(HOST)
    assert not port_open(port)
    async with running_agent(embedded_config(state_dir, port)):
        assert port_open(port)  # the agent listens itself
        async with Probe(HOST, port) as probe:
            await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
            online = await probe.wait_for(
                lambda m: m.topic == node_topic(NODE) and m.json()["state"] == "online", what="online"
            )
            assert online.json()["node_id"] == NODE

            await probe.publish(
                desired_topic(NODE, "job"), desired("job", command=["sh", "-c", "echo hi"]), retain=True
            )
            await probe.publish(desired_topic(NODE, "svc"), desired("svc", command=sleeper()), retain=True)
            job = StatusLog(probe, NODE, "job")
            done = await job.wait_state("completed")
            running = await StatusLog(probe, NODE, "svc").wait_state("running")

            assert job.states()[:3] == ["pending", "starting", "validating"]
            assert job.revisions() == list(range(1, len(job.revisions()) + 1))
            assert done["run_output"]["stdout"] == "hi\n"
            assert done["run_output"]["exit_code"] == 0
            assert pid_alive(pid_of(running))
    # The broker went with the agent; the workload did not.
    assert not port_open(port)
    assert pid_alive(pid_of(running))


@pytest.fixture
def dev_agent(tmp_path: Path, state_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`reconcile-agent run` on a copy of config/dev.yaml: a free port, run from a scratch directory.

    The copy keeps the relative `state_dir: .state`, which is resolved from the working directory.
    """
    document = yaml.safe_load((REPO_ROOT / "config" / "dev.yaml").read_text())
    assert document["mqtt"]["embedded"] is True
    port = free_port(HOST)
    document["mqtt"]["port"] = port
    document["log"] = {"format": "json", "level": "debug"}
    workdir = tmp_path / "dev"
    workdir.mkdir()
    config = workdir / "dev.yaml"
    config.write_text(yaml.safe_dump(document))
    log_path = workdir / "agent.log"
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECONCILE_")}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=workdir,
            env=clean,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        yield proc, port, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_dev_config_runs_an_agent_with_its_own_broker(
    dev_agent: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    proc, port, log_path = dev_agent
    node = yaml.safe_load((REPO_ROOT / "config" / "dev.yaml").read_text())["node_id"]

    def listening() -> bool:
        assert proc.poll() is None, log_path.read_text(errors="replace")
        return port_open(port)

    await wait_until(listening, timeout=10, what=f"the embedded broker on {port}")
    async with Probe(HOST, port) as probe:
        await probe.subscribe(node_topic(node))
        online = await probe.wait_for(lambda m: m.json()["state"] == "online", what="online")
        assert online.json()["node_id"] == node
        await probe.subscribe(f"reconcile/v1/nodes/{node}/executions/+/status")
        await probe.publish(desired_topic(node, "hello"), desired("hello", command=["echo", "hello"]))
        done = await StatusLog(probe, node, "hello").wait_state("completed")
        assert done["run_output"]["stdout"] == "hello\n"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "Traceback" not in log_path.read_text(errors="replace")
    assert (tmp_path / "dev" / ".state" / "agent.db").exists()  # relative to where it was started
    wait_until_sync(lambda: not port_open(port), timeout=5, what="embedded broker closed")

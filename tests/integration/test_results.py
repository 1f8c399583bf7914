"""Results end to end: a real agent, real workloads, a real broker and a real S3 server (rclone).

Each test checks what landed where (the archive on disk, the object's bytes on the S3 server), not only
what the agent says about it.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig, LimitsConfig, PublishersConfig, S3PublisherConfig
from tests.integration.test_operator_cli import cli
from tests.support.agent import (
    StatusLog,
    config_for,
    desired,
    desired_topic,
    message,
    node_topic,
    running_agent,
    state,
)
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Probe
from tests.support.s3 import BUCKET, KEY_ID, SECRET, S3Server, s3_server

NODE = "node-1"
# A workload that leaves files, a subdirectory and a link pointing out of its output directory.
WRITER = [
    "sh",
    "-c",
    'cd "$RECONCILE_OUTPUT_DIR" && echo result > answer.txt && mkdir -p sub && printf x > sub/x '
    "&& ln -s /etc/passwd escape && echo out && echo err >&2",
]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with s3_server(tmp_path / "s3") as server:
        yield server


def with_s3(config: AgentConfig, tmp_path: Path, key_id: str = KEY_ID, secret: str = SECRET) -> AgentConfig:
    (tmp_path / "key-id").write_text(key_id + "\n")
    (tmp_path / "secret").write_text(secret + "\n")
    s3 = S3PublisherConfig(access_key_id_file=tmp_path / "key-id", secret_access_key_file=tmp_path / "secret")
    return config.model_copy(update={"publishers": PublishersConfig(s3=s3)})


def s3_publisher(server: S3Server | None, **fields: Any) -> dict[str, Any]:
    endpoint = server.endpoint if server is not None else None
    return {"type": "s3", "bucket": BUCKET, "key_prefix": "runs/", "endpoint": endpoint, **fields}


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def check_archive(archive: bytes, metadata: dict[str, Any]) -> None:
    assert hashlib.sha256(archive).hexdigest() == metadata["sha256"]
    assert len(archive) == metadata["size_bytes"]
    found = members(archive)
    assert sorted(found) == [
        "exit_code",
        "output",
        "output/answer.txt",
        "output/escape",
        "output/sub",
        "output/sub/x",
        "stderr",
        "stdout",
    ]
    assert metadata["files"] == 6  # everything but the two directories
    assert found["output/escape"].issym()
    assert found["output/escape"].linkname == "/etc/passwd"  # archived as a link, never followed
    assert read_member(archive, "output/answer.txt") == b"result\n"
    assert read_member(archive, "stdout") == b"out\n"
    assert read_member(archive, "stderr") == b"err\n"
    assert read_member(archive, "exit_code") == b"0\n"
    assert {m.mtime for m in found.values()} == {0}


async def test_local_results_are_packed_kept_on_the_node_and_removed_with_the_execution(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        doc = desired("job-1", command=WRITER, publisher={"type": "local"})
        await watching.publish(desired_topic(NODE, "job-1"), doc, retain=True)
        log = StatusLog(watching, NODE, "job-1")
        done = await log.wait_state("completed")
        publishing = [d for d in log.documents() if message(d) == "publishing results"]
        assert publishing, log.states()
        assert state(publishing[0]) in ("validating", "running")  # the state type is kept meanwhile
        assert publishing[0]["observed_state"]["details"]["publishing"] == {
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }
        assert all(d["published_results"] is None for d in log.documents()[:-1])
        assert log.revisions() == list(range(1, len(log.revisions()) + 1))

        results = done["published_results"]
        path = state_dir / "results" / "job-1" / "job-1.tar.gz"
        assert results["storage_source"] == "local"
        assert results["name"] == "job-1.tar.gz"
        assert results["path"] == str(path.absolute())
        assert results["url"] == path.absolute().as_uri()
        assert results["s3"] is None
        check_archive(path.read_bytes(), results["metadata"])
        assert done["run_output"]["exit_code"] == 0

        await watching.publish(desired_topic(NODE, "job-1"), b"", retain=True)
        await watching.wait_for(
            lambda m: m.topic.endswith("/job-1/status") and not m.payload, 10, what="status cleared"
        )
    assert not path.exists()
    assert not (state_dir / "executions" / "job-1").exists()


async def test_s3_results_are_uploaded_with_the_bytes_the_status_describes(
    broker: Broker, watching: Probe, state_dir: Path, s3: S3Server, tmp_path: Path
) -> None:
    config = with_s3(config_for(broker, state_dir), tmp_path)
    async with running_agent(config):
        node = await watching.wait_for(lambda m: m.topic == node_topic(NODE), 10, what="node status")
        capabilities = node.json()[
            "capabilities"
        ]  # containment and limits: tests/integration/test_containment.py
        assert (capabilities["engines"], capabilities["publishers"]) == (["process"], ["local", "s3"])
        doc = {**desired("job-2", command=WRITER, publisher=s3_publisher(s3)), "job_id": "batch"}
        await watching.publish(desired_topic(NODE, "job-2"), doc, retain=True)
        done = await StatusLog(watching, NODE, "job-2").wait_state("completed")
        results = done["published_results"]
        assert results["storage_source"] == "s3"
        assert results["url"] == f"s3://{BUCKET}/runs/batch/job-2.tar.gz"
        assert results["path"] is None
        assert results["s3"]["key"] == "runs/batch/job-2.tar.gz"
        assert results["s3"]["endpoint"] == s3.endpoint
        check_archive(s3.get("runs/batch/job-2.tar.gz"), results["metadata"])
        assert not (state_dir / "executions" / "job-2" / "publishing").exists()  # staging is cleaned up

        await watching.publish(desired_topic(NODE, "job-2"), b"", retain=True)
        await watching.wait_for(
            lambda m: m.topic.endswith("/job-2/status") and not m.payload, 10, what="status cleared"
        )
    assert s3.keys() == ["runs/batch/job-2.tar.gz"]  # the agent never deletes an object


async def test_every_attempt_gets_a_fresh_empty_output_directory(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    # Attempt 1 leaves a file and fails; attempt 2 must not see it, and succeeds.
    script = (
        'ls -A "$RECONCILE_OUTPUT_DIR" > "$RECONCILE_OUTPUT_DIR/seen"; '
        'if [ -e /proc/self ] && [ ! -e "$0.done" ]; then touch "$0.done"; exit 1; fi'
    )
    marker = state_dir.parent / "marker"
    doc = desired(
        "retry", command=["sh", "-c", script, str(marker)], policy="on-failure", publisher={"type": "local"}
    )
    async with running_agent(config_for(broker, state_dir)):
        await watching.publish(desired_topic(NODE, "retry"), doc, retain=True)
        done = await StatusLog(watching, NODE, "retry").wait_state("completed", timeout=20)
    archive = Path(done["published_results"]["path"]).read_bytes()
    assert read_member(archive, "output/seen") == b"seen\n"  # only its own file: the directory was empty
    assert done["restart_count"] == 1
    assert [p.name for p in (state_dir / "executions" / "retry").glob("output-*")] == ["output-2"]


async def test_output_past_the_cap_fails_the_publish_with_the_reason(
    broker: Broker, watching: Probe, state_dir: Path
) -> None:
    config = config_for(broker, state_dir).model_copy(
        update={"limits": LimitsConfig(max_results_bytes=10_000)}
    )
    command = ["sh", "-c", 'head -c 20000 /dev/zero > "$RECONCILE_OUTPUT_DIR/big"']
    async with running_agent(config):
        await watching.publish(
            desired_topic(NODE, "big"),
            desired("big", command=command, publisher={"type": "local"}),
            retain=True,
        )
        failed = await StatusLog(watching, NODE, "big").wait_state("failed")
    assert message(failed).startswith("publishing results failed: the results are 20002 bytes")
    assert "over the limit of 10000 (limits.max_results_bytes)" in message(failed)
    assert failed["run_output"]["exit_code"] == 0
    assert failed["published_results"] is None
    assert not (state_dir / "results" / "big").exists() or not any((state_dir / "results" / "big").iterdir())


@pytest.mark.parametrize(
    ("publisher", "reason"),
    [
        ({"type": "ftp"}, "spec.publisher.type: unknown type 'ftp'"),
        ({"type": "s3", "key_prefix": "runs/"}, "spec.publisher.s3.bucket: Field required"),
        ({"type": "s3", "bucket": "results", "key_prefix": "/abs//x"}, "is not a valid S3 key prefix"),
        ({"type": "s3", "bucket": "results"}, "this node cannot publish to s3"),
    ],
    ids=["unknown-type", "missing-bucket", "bad-key-prefix", "s3-without-credentials"],
)
async def test_a_publisher_the_node_cannot_serve_is_rejected_on_arrival(
    broker: Broker, watching: Probe, state_dir: Path, publisher: dict[str, Any], reason: str
) -> None:
    async with running_agent(config_for(broker, state_dir)):
        node = await watching.wait_for(lambda m: m.topic == node_topic(NODE), 10, what="node status")
        assert node.json()["capabilities"]["publishers"] == ["local"]
        doc = desired("bad", command=["true"], publisher=publisher)
        await watching.publish(desired_topic(NODE, "bad"), doc, retain=True)
        failed = await StatusLog(watching, NODE, "bad").wait_state("failed")
    assert reason in message(failed), message(failed)
    assert failed["details"]["rejected"]["generation"] == 1
    assert not (state_dir / "executions" / "bad").exists()  # nothing ran


async def test_an_endpoint_refusing_connections_is_retried_then_fails_after_the_deadline(
    broker: Broker, watching: Probe, state_dir: Path, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = with_s3(config_for(broker, state_dir), tmp_path)
    publisher = {"type": "s3", "bucket": BUCKET, "endpoint": closed, "deadline_s": 2.5}
    async with running_agent(config):
        await watching.publish(
            desired_topic(NODE, "away"), desired("away", command=WRITER, publisher=publisher), retain=True
        )
        log = StatusLog(watching, NODE, "away")
        failed = await log.wait_state("failed", timeout=20)
    tries = [
        d["observed_state"]["details"]["publishing"]
        for d in log.documents()
        if message(d) == "publishing results"
    ]
    assert [t["attempts"] for t in tries] == [0, 1, 2]  # tries at 0, 1 s and 3 s: the deadline at 2.5 s
    assert "cannot connect to" in tries[1]["last_error"]
    assert tries[1]["next_attempt_at"] is not None
    assert message(failed).startswith(f"publishing results failed: cannot connect to {closed}")
    assert message(failed).endswith("publisher.deadline_s passed")
    assert failed["run_output"]["exit_code"] == 0


async def test_wrong_credentials_fail_with_a_clear_reason(
    broker: Broker, watching: Probe, state_dir: Path, s3: S3Server, tmp_path: Path
) -> None:
    config = with_s3(config_for(broker, state_dir), tmp_path, key_id="wrong-id", secret="wrong-secret")
    async with running_agent(config):
        doc = desired("creds", command=WRITER, publisher=s3_publisher(s3))
        await watching.publish(desired_topic(NODE, "creds"), doc, retain=True)
        failed = await StatusLog(watching, NODE, "creds").wait_state("failed")
    assert message(failed).startswith(f"publishing results failed: {s3.endpoint} refused the credentials")
    assert s3.keys() == []


async def test_the_cli_shows_where_results_are_and_downloads_them(
    broker: Broker, watching: Probe, state_dir: Path, s3: S3Server, tmp_path: Path
) -> None:
    config = with_s3(config_for(broker, state_dir), tmp_path)
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": broker.host, "port": broker.port},
                "publishers": {
                    "s3": {
                        "access_key_id_file": str(tmp_path / "key-id"),
                        "secret_access_key_file": str(tmp_path / "secret"),
                    }
                },
            }
        )
    )
    async with running_agent(config):
        for eid, publisher in (("up", s3_publisher(s3)), ("here", {"type": "local"})):
            await watching.publish(
                desired_topic(NODE, eid), desired(eid, command=WRITER, publisher=publisher), retain=True
            )
            await StatusLog(watching, NODE, eid).wait_state("completed")

        shown = await cli("get", "up", "--config", str(cli_config))
        assert shown.code == 0, shown.output
        assert f"Results of {NODE}/up: s3://{BUCKET}/runs/up/up.tar.gz (" in shown.stdout

        into = tmp_path / "fetched"
        fetched = await cli("results", "up", "-o", str(into), "--config", str(cli_config))
        assert fetched.code == 0, fetched.output
        assert (into / "output" / "answer.txt").read_text() == "result\n"
        assert (into / "stdout").read_text() == "out\n"
        assert not (into / "output" / "escape").exists()  # a link out of the directory is left out
        assert "output/escape" in fetched.stderr

        local = await cli("results", "here", "--config", str(cli_config))
        assert local.code == 0, local.output
        assert local.stdout.strip() == f"{NODE}:{(state_dir / 'results' / 'here' / 'here.tar.gz').absolute()}"

        missing = await cli("results", "nothing", "--config", str(cli_config))
        assert missing.code == 1
        assert "no execution 'nothing' on any node" in missing.stderr

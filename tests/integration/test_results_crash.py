"""Results exactly once across kill -9: while packing, while uploading, after the upload but before the
status is committed. The agent runs as its own process (the real CLI) and is killed with SIGKILL; a
proxy between it and the S3 server holds the upload at the moment under test."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, StatusLog, desired, desired_topic, state
from tests.support.broker import Broker
from tests.support.mqtt import Probe
from tests.support.s3 import BUCKET, KEY_ID, SECRET, HoldingProxy, S3Server, s3_server
from tests.support.wait import wait_until

NODE = "node-1"
EID = "crash-1"
KEY = f"runs/{EID}/{EID}.tar.gz"


def check_history(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Revisions 1..N, one document per revision (redeliveries are exact copies), completed once."""
    by_revision: dict[int, set[str]] = defaultdict(set)
    for d in documents:
        by_revision[d["revision"]].add(repr(sorted(d.items())))
    assert all(len(v) == 1 for v in by_revision.values()), "two documents under one revision"
    assert sorted(by_revision) == list(range(1, max(by_revision) + 1))
    latest = {d["revision"]: d for d in documents}
    completed = [r for r, d in latest.items() if state(d) == "completed"]
    assert len(completed) == 1, [state(latest[r]) for r in sorted(latest)]
    return latest[completed[0]]


@pytest.mark.parametrize("moment", ["packing", "uploading", "after-upload"])
async def test_kill_9_while_publishing_publishes_once_with_the_same_content(
    broker: Broker, watching: Probe, tmp_path: Path, moment: str
) -> None:
    (tmp_path / "key-id").write_text(KEY_ID)
    (tmp_path / "secret").write_text(SECRET)
    s3: S3Server
    with s3_server(tmp_path / "s3") as s3:
        async with HoldingProxy(s3.port) as proxy:
            agent = AgentProcess(
                broker,
                tmp_path,
                publishers={
                    "s3": {
                        "access_key_id_file": str(tmp_path / "key-id"),
                        "secret_access_key_file": str(tmp_path / "secret"),
                    }
                },
            )
            staging = agent.state_dir / "executions" / EID / "publishing"
            # Enough random output that packing takes a while (it is what the first case kills).
            size = "40M" if moment == "packing" else "64K"
            command = ["sh", "-c", f'head -c {size} /dev/urandom > "$RECONCILE_OUTPUT_DIR/data"; echo done']
            publisher = {"type": "s3", "bucket": BUCKET, "key_prefix": "runs/", "endpoint": proxy.endpoint}
            proxy.hold = {"packing": None, "uploading": "body", "after-upload": "response"}[moment]  # type: ignore[assignment]
            agent.start()
            try:
                await watching.publish(
                    desired_topic(NODE, EID), desired(EID, command=command, publisher=publisher), retain=True
                )
                uploaded: bytes | None = None
                stamp = 0
                if moment == "packing":
                    await wait_until(
                        (staging / f".{EID}.tar.gz.partial").exists,
                        30,
                        interval=0.005,
                        what="packing",
                    )
                elif moment == "uploading":
                    await wait_until(lambda: proxy.puts_seen > 0, 30, what="an upload under way")
                else:
                    await wait_until(lambda: s3.keys() == [KEY], 30, what="the object on the server")
                    uploaded = s3.get(KEY)
                    stamp = s3.object_file(KEY).stat().st_mtime_ns
                agent.kill()
                log = StatusLog(watching, NODE, EID)
                assert "completed" not in log.states()
                proxy.hold = None
                agent.start()
                await log.wait_state("completed", timeout=60)
                done = check_history(log.documents())
            finally:
                agent.kill()
        results = done["published_results"]
        assert s3.keys() == [KEY]
        archive = s3.get(KEY)
        assert hashlib.sha256(archive).hexdigest() == results["metadata"]["sha256"]
        assert len(archive) == results["metadata"]["size_bytes"]
        assert results["name"] == f"{EID}.tar.gz"
        assert done["run_output"]["exit_code"] == 0
        if uploaded is not None:
            assert archive == uploaded  # the same content under the same name...
            assert s3.object_file(KEY).stat().st_mtime_ns == stamp  # ...and not uploaded a second time

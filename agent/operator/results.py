"""``results EXECUTION``: fetch an execution's published results.

An ``s3`` result is downloaded with the agent's own S3 client code (boto3), its sha256 checked against
the status, and unpacked into ``-o DIR`` (default ``./<execution_id>``) with tarfile's ``data`` filter:
no absolute paths, nothing outside DIR, no devices, links only within DIR. Credentials are those of
``publishers.s3`` in the ``--config`` file, or the standard AWS environment. A ``local`` result is a
file on its node: the command says which node and path, since the CLI cannot reach into the node.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, load_config
from agent.exit_codes import EXIT_OK, EXIT_USAGE
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.get import statuses
from agent.operator.render import note, out
from agent.operator.status import ExecutionView
from agent.protocol import ANY, PUBLISHING_MESSAGE, S3Publisher


async def results(args: argparse.Namespace, target: Target) -> int:
    views = await statuses(target, args.node or ANY, args.execution)
    view = _one(views, args.execution, args.node)
    published = view.results
    if published is None:
        why = "they are being published" if view.message == PUBLISHING_MESSAGE else "none were published"
        raise OperatorError(f"{view.name} has no results yet: {why} (it is {view.state}: {view.message})")
    source = published.get("storage_source")
    if source == "local":
        out(f"{view.node_id}:{published.get('path')}")
        note(f"The archive is a file on node {view.node_id}; copy it from there.")
        return EXIT_OK
    if source != "s3":
        raise OperatorError(f"{view.name}: results in {source!r}, which this CLI cannot fetch")
    destination = Path(args.output_dir) if args.output_dir else Path(view.execution_id)
    config = _config(args.config)
    files, skipped = await asyncio.to_thread(_download, published, destination, config)
    out(str(destination))
    note(f"{files} entries from {published.get('url')} unpacked into {destination}")
    if skipped:
        note(f"left out, as they would point outside {destination}: {', '.join(skipped)}")
    return EXIT_OK


def _one(views: list[ExecutionView], execution_id: str, node_id: str | None) -> ExecutionView:
    if not views:
        where = f"on node {node_id}" if node_id else "on any node"
        raise OperatorError(f"no execution {execution_id!r} {where}")
    if len(views) > 1:
        nodes = ", ".join(v.node_id for v in views)
        raise OperatorError(f"execution {execution_id!r} is on several nodes ({nodes}); pick one with --node")
    return views[0]


def _config(path: Path | None) -> AgentConfig | None:
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        raise OperatorError(exc.message, EXIT_USAGE) from None


def _download(
    published: dict[str, Any], destination: Path, config: AgentConfig | None
) -> tuple[int, list[str]]:
    # Imported here: boto3 takes a while to load, and only this command needs it.
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from agent.results.s3 import error_of, make_client  # noqa: PLC0415

    location = published.get("s3") or {}
    metadata = published.get("metadata") or {}
    try:
        credentials = config.s3_credentials() if config is not None else None
    except ConfigError as exc:
        raise OperatorError(exc.message, EXIT_USAGE) from None
    bucket, key = str(location.get("bucket")), str(location.get("key"))
    endpoint, region = location.get("endpoint"), str(location.get("region") or "us-east-1")
    client = make_client(endpoint, region, credentials)
    with tempfile.TemporaryFile() as archive:
        try:
            client.download_fileobj(bucket, key, archive)
        except (BotoCoreError, ClientError) as exc:
            publisher = S3Publisher(type="s3", bucket=bucket, endpoint=endpoint, region=region)
            raise OperatorError(
                f"cannot download {published.get('url')}: {error_of(exc, publisher).reason}"
            ) from None
        archive.seek(0)
        digest = hashlib.file_digest(archive, "sha256").hexdigest()
        if digest != metadata.get("sha256"):
            raise OperatorError(
                f"{published.get('url')} has sha256 {digest}, not {metadata.get('sha256')} as published: "
                "the object was changed after the agent uploaded it"
            )
        archive.seek(0)
        destination.mkdir(parents=True, exist_ok=True)
        skipped: list[str] = []

        def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
            # A workload's link to /etc/passwd is archived as a link; here it is left out, not followed.
            try:
                return tarfile.data_filter(member, path)
            except tarfile.FilterError:
                skipped.append(member.name)
                return None

        try:
            with tarfile.open(fileobj=archive, mode="r:gz") as tar:
                members = tar.getmembers()
                tar.extractall(destination, filter=safe)
        except (tarfile.TarError, OSError) as exc:
            raise OperatorError(f"cannot unpack {published.get('url')} into {destination}: {exc}") from None
    return len(members) - len(skipped), skipped

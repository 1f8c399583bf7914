"""The ``local`` publisher: the archive stays on the node, at ``<results_dir>/<job_id>/<execution_id>.tar.gz``."""

from __future__ import annotations

import contextlib
from pathlib import Path

from agent.protocol import PublishedResults, ResultsMetadata, archive_name
from agent.results.pack import Packed


def archive_path(results_dir: Path, job_id: str, execution_id: str) -> Path:
    return results_dir.absolute() / job_id / archive_name(execution_id)


def described(packed: Packed, execution_id: str) -> PublishedResults:
    """The archive, packed straight into its final place (atomically, by rename), as published results."""
    path = str(packed.path)
    return PublishedResults(
        storage_source="local",
        name=archive_name(execution_id),
        url=packed.path.as_uri(),
        path=path,
        metadata=ResultsMetadata(sha256=packed.sha256, size_bytes=packed.size_bytes, files=packed.files),
    )


def remove(results_dir: Path, job_id: str, execution_id: str) -> None:
    """Remove the execution's archive (and a partial one), and the job's directory once it is empty."""
    path = archive_path(results_dir, job_id, execution_id)
    path.unlink(missing_ok=True)
    path.with_name(f".{path.name}.partial").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (other executions of the job), or already gone
        path.parent.rmdir()

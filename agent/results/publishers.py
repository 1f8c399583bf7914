"""The publishers this node serves, and one try at publishing an execution's results.

Packing and uploading run in a small thread pool of their own, so a large archive never holds up the
event loop nor the worker threads that spawn workloads (asyncio's default pool).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.config import ConfigError, LimitsConfig
from agent.core.actions import Publish
from agent.protocol import LocalPublisher, PublishedResults, S3Publisher, archive_name, s3_key
from agent.results import local
from agent.results.errors import PublishError
from agent.results.pack import pack
from agent.results.s3 import Credentials, S3Uploader

WORKERS = 2  # archives packed or uploaded at once; more would only compete for the same disk and link
STAGING = "publishing"  # in the run directory: where an archive for s3 is packed before its upload


class Publishers:
    """``s3_credentials`` is None when this node has no s3 publisher; otherwise a function returning the
    configured credentials, or None to use boto3's standard chain."""

    def __init__(
        self,
        results_dir: Path,
        max_bytes: int,
        s3_credentials: Callable[[], Credentials | None] | None,
    ) -> None:
        self.results_dir = results_dir
        self.max_bytes = max_bytes
        self._s3 = None if s3_credentials is None else S3Uploader(s3_credentials)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="publish")
        self._stop = threading.Event()

    @classmethod
    def local_only(cls, results_dir: Path) -> Publishers:
        """Only ``local``, with the default size cap: for a runtime without an agent configuration."""
        return cls(results_dir, LimitsConfig().max_results_bytes, None)

    @property
    def types(self) -> list[str]:
        """``capabilities.publishers`` of the node status."""
        return ["local", "s3"] if self._s3 is not None else ["local"]

    def problem(self, publisher: LocalPublisher | S3Publisher) -> str | None:
        """Why this node cannot serve ``publisher``, or None."""
        if publisher.type not in self.types:
            return (
                f"spec.publisher.type: this node cannot publish to {publisher.type}: no credentials are "
                f"configured for it (publishers.{publisher.type}; this node serves {', '.join(self.types)})"
            )
        return None

    async def publish(self, action: Publish, run_dir: Path, output_dir: Path) -> PublishedResults:
        """One try; raises :class:`PublishError`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._publish, action, run_dir, output_dir)

    def _publish(self, action: Publish, run_dir: Path, output_dir: Path) -> PublishedResults:
        publisher = action.publisher
        if isinstance(publisher, LocalPublisher):
            destination = local.archive_path(self.results_dir, action.job_id, action.execution_id)
            try:
                destination.parent.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PublishError(f"cannot create {destination.parent}: {exc}", retryable=True) from exc
            packed = pack(destination, output_dir, run_dir, action.exit_code, self.max_bytes, stop=self._stop)
            return local.described(packed, action.execution_id)
        if self._s3 is None:
            raise PublishError(
                "this node has no s3 publisher (publishers.s3 is not configured)", retryable=False
            )
        staging = run_dir / STAGING
        packed = pack(
            staging / archive_name(action.execution_id),
            output_dir,
            run_dir,
            action.exit_code,
            self.max_bytes,
            stop=self._stop,
        )
        try:
            return self._s3.upload(packed, publisher, s3_key(publisher, action.job_id, action.execution_id))
        except ConfigError as exc:  # a key file that became unreadable: it may be put back
            raise PublishError(exc.message, retryable=True) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # packed again, identically, by the next try

    def remove(self, job_id: str, execution_id: str) -> None:
        """Remove what publishing left on this node for the execution (never an S3 object)."""
        local.remove(self.results_dir, job_id, execution_id)

    def close(self) -> None:
        """Stop: packs under way end at their next read (an upload under way is left to finish)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Rotation of workload logs (state_dir/executions/<id>/stdout.log, stderr.log).

To be completed (issue #6): this stub is the interface the daemon uses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


async def rotate_forever(root: Path, max_bytes: int, keep: int, interval_s: float = 5.0) -> None:
    """Every ``interval_s``, rotate each workload stream under ``root`` that is larger than ``max_bytes``."""
    await asyncio.Event().wait()

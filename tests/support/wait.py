"""Deadline-based waiting: the only allowed form of waiting in the tests (no fixed sleeps).

Both helpers poll ``fn`` until it returns a truthy value and return that value, or raise
``AssertionError`` naming ``what`` when the deadline passes. ``fn`` is always checked once more after
the deadline, so a slow machine that wakes up late does not fail a condition that is in fact true.
Exceptions raised by ``fn`` propagate immediately.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")


def _timeout_error(what: str, timeout: float, last: object) -> AssertionError:
    name = what or "condition"
    return AssertionError(f"timed out after {timeout:.2f}s waiting for {name} (last value: {last!r})")


@overload
async def wait_until(
    fn: Callable[[], Awaitable[T]], timeout: float, interval: float = ..., what: str = ...
) -> T: ...
@overload
async def wait_until(fn: Callable[[], T], timeout: float, interval: float = ..., what: str = ...) -> T: ...
async def wait_until(
    fn: Callable[[], T] | Callable[[], Awaitable[T]],
    timeout: float,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``fn`` (sync or async) every ``interval`` seconds until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        value = cast(T, result)
        if value:
            return value
        if expired:
            raise _timeout_error(what, timeout, value)
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_until_sync(
    fn: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Blocking twin of ``wait_until`` for synchronous code (fixtures, subprocess control)."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        value = fn()
        if value:
            return value
        if expired:
            raise _timeout_error(what, timeout, value)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

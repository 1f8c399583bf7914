"""The one way publishing fails."""

from __future__ import annotations


class PublishError(Exception):
    """A try at publishing results failed. ``reason`` is for the status message; ``retryable`` is False
    when trying again cannot help (over the size cap, the bucket does not exist, refused credentials)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable

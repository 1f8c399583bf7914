"""The check every core test makes of a decision's published statuses: each transition is in the core's table."""

from __future__ import annotations

from itertools import pairwise

from agent.core.actions import Action, PublishStatus
from agent.core.model import Absent, Execution
from agent.core.transitions import legal
from agent.protocol import ObservedStateType


def assert_legal_transitions(before: Execution | Absent, actions: list[Action]) -> None:
    """The observed state types published by ``actions``, after ``before``'s, follow agent/core/transitions.py."""
    types: list[ObservedStateType | None] = [
        before.observed.state_type if isinstance(before, Execution) else None
    ]
    types += [a.document["observed_state"]["state_type"] for a in actions if isinstance(a, PublishStatus)]
    for one, two in pairwise(types):
        assert two is not None
        assert legal(one, two), f"illegal transition {one} -> {two}"

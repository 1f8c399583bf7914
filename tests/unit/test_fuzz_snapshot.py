"""What a snapshot reads off a broker may be anything anyone published: it never raises.

The CLI's snapshot (agent/operator/snapshot.py) folds status payloads and reads node statuses' counts;
the agent's resync (agent/resync.py) hands payloads to intake, whose parser has its own fuzzing
(tests/unit/test_fuzz_desired.py), and the core's DesiredMissing rule follows any sequence of documents.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.core.clock import Now
from agent.core.events import DesiredMissing
from agent.core.lifecycle import MISSING, decide
from agent.operator.session import Incoming
from agent.operator.snapshot import _counted, _object, fold
from agent.protocol import FleetTopics
from tests.unit.test_lifecycle import T0, absent, desired, rejection, started

TOPICS = FleetTopics("reconcile/v1")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
payloads = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())


@given(
    st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(["e1", "e2"]), payloads), max_size=10)
)
def test_folding_any_payloads_never_raises_and_keeps_only_status_documents(
    messages: list[tuple[str, str, bytes]],
) -> None:
    incoming = [
        Incoming(TOPICS.status(node, execution), payload, True) for node, execution, payload in messages
    ]
    views = fold(TOPICS, incoming)
    for (node, execution), view in views.items():
        assert (view.node_id, view.execution_id) == (node, execution)
        assert isinstance(view.revision, int)


@given(payloads)
def test_a_node_status_of_any_shape_counts_or_says_it_does_not(payload: bytes) -> None:
    counted = _counted(_object(payload))
    assert counted is None or (isinstance(counted, int) and counted >= 0)


@given(st.dictionaries(st.sampled_from(["running", "failed", "x"]), json_values, max_size=3))
def test_only_an_online_node_with_whole_numbers_counts(counts: dict[str, Any]) -> None:
    document: dict[str, object] = {"state": "online", "executions": counts}
    numbers = list(counts.values())
    whole = all(type(n) is int and n >= 0 for n in numbers)
    assert _counted(document) == (sum(numbers) if whole else None)
    assert _counted({**document, "state": "offline"}) is None


events = st.sampled_from(["missing", "same", "newer", "bad"])


@given(st.lists(events, max_size=12))
def test_the_mark_follows_the_last_word_about_the_document(sequence: list[str]) -> None:
    state, _ = decide(absent(), desired(1), Now(T0, T0))
    state, _ = decide(state, started(1), Now(T0, T0))
    generation = 1
    marked = False
    for step, what in enumerate(sequence):
        now = Now(T0 + step + 1, T0 + step + 1)
        if what == "missing":
            event: Any = DesiredMissing()
            marked = marked or not state.deleting  # type: ignore[union-attr]
        elif what == "same":
            event, marked = desired(generation), False
        elif what == "newer":
            generation += 1
            event, marked = desired(generation), False
        else:
            generation += 1
            event, marked = rejection(generation, digest=f"bad-{generation}"), False
        before = state.revision
        state, actions = decide(state, event, now)
        assert (MISSING in state.details) == marked  # type: ignore[union-attr]
        assert state.revision - before == sum(1 for a in actions if type(a).__name__ == "PublishStatus")

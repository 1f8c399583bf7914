"""Files for ``apply`` nobody wrote (tests/support/fuzz_files.py) through ``load_files``.

Whatever a file holds, ``apply`` either plans documents the agent's own parser accepts, or stops with an
:class:`OperatorError` (exit 2) whose message is one line naming the file: never another exception, never
a document published that the agent would refuse, never a walk of what aliases expand to.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from agent.exit_codes import EXIT_USAGE
from agent.operator.documents import Planned, load_files
from agent.operator.errors import OperatorError
from agent.protocol import Rejected, parse_desired
from tests.support import fuzz_files

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PAYLOAD = 256 * 1024


def plan(suffix: str, data: bytes) -> list[Planned] | OperatorError:
    with tempfile.TemporaryDirectory(prefix="fuzz-apply-") as tmp:
        path = Path(tmp) / f"documents{suffix}"
        path.write_bytes(data)
        try:
            return load_files([str(path)], MAX_PAYLOAD)
        except OperatorError as exc:
            refused = exc
        assert refused.message.startswith(str(path)), refused.message
        return refused


@FUZZ
@given(fuzz_files.apply_files())
def test_any_file_is_planned_as_the_agent_would_accept_it_or_refused_in_one_line(
    file: tuple[str, bytes],
) -> None:
    outcome = plan(*file)
    if isinstance(outcome, OperatorError):
        assert outcome.exit_code == EXIT_USAGE
        assert "\n" not in outcome.message, outcome.message
        assert len(outcome.message) <= 1000, outcome.message[:2000]
        assert "Traceback" not in outcome.message
        return
    assert outcome, "a file with no documents was planned"
    for planned in outcome:
        payload = json.dumps(planned.document(1)).encode()
        assert not isinstance(parse_desired(planned.execution_id, payload, MAX_PAYLOAD), Rejected)


@pytest.mark.parametrize("levels", [6, 9])
def test_aliases_that_expand_past_a_mebibyte_are_refused_before_they_are_walked(levels: int) -> None:
    text = "\n".join(
        [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
        + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
        + [
            "node_id: n1",
            "execution_id: x1",
            "desired_state: {state_type: running}",
            f"spec: {{command: *l{levels - 1}}}",
        ]
    )
    outcome = plan(".yaml", text.encode())
    assert isinstance(outcome, OperatorError)
    assert "aliases expand to too much" in outcome.message

"""The table of transitions in docs/protocol.md says what the core's table (agent/core/transitions.py) says."""

from __future__ import annotations

import re
from pathlib import Path

from agent.core.transitions import TRANSITIONS
from agent.protocol import OBSERVED_STATES

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NONE = "(none)"


def docs_table() -> dict[str | None, frozenset[str]]:
    """The rows of the table under "### Transitions": state -> the states that may follow it."""
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("\n### Transitions\n", 1)[1].split("\n#", 1)[0]
    rows: dict[str | None, frozenset[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("from", "---"):
            continue
        before = None if cells[0] == NONE else cells[0].strip("`")
        assert before not in rows, f"docs/protocol.md lists {cells[0]} twice"
        rows[before] = frozenset(re.findall(r"`([a-z]+)`", cells[1]))
    return rows


def test_the_docs_table_is_the_cores() -> None:
    docs = docs_table()
    core = {before: frozenset(after) for before, after in TRANSITIONS.items()}
    assert docs == core


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == {None, *OBSERVED_STATES}
    for after in TRANSITIONS.values():
        assert after <= set(OBSERVED_STATES)

"""The import graph of agent/: no cycle anywhere, and every module in a layer of the layers contract.

import-linter (``lint-imports``, pyproject.toml) checks the contracts; a cycle between two modules of
one layer, or a module in no layer, would pass them unseen, so those two are checked here on the same
graph (grimp, which import-linter builds it with).
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("agent")


def test_no_import_cycle_in_agent() -> None:
    g = graph()
    cycles = []
    for importer in sorted(g.modules):
        for imported in sorted(g.find_modules_directly_imported_by(importer)):
            back = g.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles in agent/:\n" + "\n".join(cycles)


def test_every_module_of_agent_is_in_a_layer() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    top_level = {m for m in graph().modules if m.count(".") == 1}
    missing = sorted(top_level - placed)
    assert not missing, (
        f"{', '.join(missing)}: in no layer of the layers contract in pyproject.toml; put each in the layer "
        "of what it may import and be imported by (docs/design.md, module map)"
    )

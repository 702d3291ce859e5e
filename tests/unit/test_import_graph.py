"""No import circles in the simulator: each part imports only what it builds on, so a reader
(and Python) can load them bottom-up. Typing-only imports count too: a circle through them is
still two modules that each need the other to be understood."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_within(package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from package import x`` included)."""
    modules = {p.stem for p in (ROOT / package.replace(".", "/")).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((ROOT / package.replace(".", "/") / f"{name}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t.removeprefix(package + ".") for t in targets
                      if t.startswith(package + ".")} & modules
        graph[name] = found - {name}
    return graph


def test_the_simulator_has_no_import_circle() -> None:
    graph = imports_within("gateway.simulator")
    assert "call" in graph["cloud_api"] or "calls" in graph["cloud_api"]
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a circle
    assert order.index("call") < order.index("cloud_api")


def test_a_circle_is_found() -> None:
    """The check itself: a circle of two modules is reported."""
    try:
        list(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("graphlib found no circle")

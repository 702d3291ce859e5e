"""The shape of gateway/: no import circle, and no long module without a reason.

An import circle means two modules cannot be understood (or tested, or replaced) one without
the other, and it breaks as soon as one of them imports a name at module level that the other
has not defined yet. This test reads every module's imports with :mod:`ast` — module-level, inside
functions and under ``if TYPE_CHECKING:`` alike: a function-level import only hides the circle
until that function runs, and a type-only one still makes each module half of the other's
meaning — and fails on any cycle, naming one path around it.

A module over :data:`MAX_LINES` lines usually does more than one job; one that is longer for a
reason says so in its docstring (a sentence naming the limit: "longer than 450 lines because
..."), and this test holds it to that.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"
MAX_LINES = 450

KNOWN_CYCLES: set[frozenset[str]] = set()
# None today. A circle being untangled on a branch may stand here until it merges, as a set of
# its modules; test_known_cycles_are_still_there says when an entry can go.
"""Cycles another engineer owns right now, each as the set of modules in it."""

KNOWN_LONG: set[str] = set()
# None today. A module being split on a branch may stand here until it merges;
# test_known_long_modules_are_still_long says when an entry can go.


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
            if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The gateway modules ``name`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from gateway.media import codecs`` imports the module gateway.media.codecs.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("gateway"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest circle through the component's first module, for the failure message."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v] & component):
            if w == start:
                trail = [v]
                while trail[-1] != start:
                    trail.append(came_from[trail[-1]])
                return [start, *reversed(trail[:-1]), start] if len(trail) > 1 \
                    else [start, start]
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not a circle")


def test_no_import_cycle_in_gateway():
    graph = import_graph()
    found = [c for c in cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    assert not found, "import circles in gateway/:\n" + "\n".join(
        " -> ".join(path_through(graph, c)) for c in found)


def test_known_cycles_are_still_there():
    """An allow-list entry that no longer matches must be removed, so it cannot hide a new
    circle among the same modules later."""
    current = {frozenset(c) for c in cycles(import_graph())}
    assert KNOWN_CYCLES <= current, f"fixed, remove from KNOWN_CYCLES: {KNOWN_CYCLES - current}"


def long_without_reason() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if f"{MAX_LINES} lines" not in " ".join(doc.split()):
            bad.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    return bad


def test_long_modules_say_why():
    bad = [b for b in long_without_reason() if b.split(" ")[0] not in KNOWN_LONG]
    assert not bad, (f"modules over {MAX_LINES} lines whose docstring does not say why "
                     f"(split them, or say why in a sentence with '{MAX_LINES} lines'):\n"
                     + "\n".join(bad))


def test_known_long_modules_are_still_long():
    still = {b.split(" ")[0] for b in long_without_reason()}
    assert KNOWN_LONG <= still, f"fixed, remove from KNOWN_LONG: {KNOWN_LONG - still}"


def test_the_walk_sees_function_level_and_type_checking_imports(tmp_path: Path):
    """The checker itself: a circle closed by an import inside a function, or under
    ``if TYPE_CHECKING:``, is a circle; relative imports resolve; other packages are not
    followed."""
    (tmp_path / "a.py").write_text("import os\nfrom gateway.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from gateway.b import y\n")
    (tmp_path / "d.py").write_text("import gateway.c\n")
    known = {"gateway.a", "gateway.b", "gateway.c", "gateway.d"}
    graph = {f"gateway.{n}": imports_of(f"gateway.{n}", tmp_path / f"{n}.py", known)
             for n in "abcd"}
    assert graph == {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.a"},
                     "gateway.c": {"gateway.b"}, "gateway.d": {"gateway.c"}}
    assert cycles(graph) == [{"gateway.a", "gateway.b"}]
    graph["gateway.b"].add("gateway.c")
    graph["gateway.c"].add("gateway.d")
    assert cycles(graph) == [{"gateway.a", "gateway.b", "gateway.c", "gateway.d"}]
    assert path_through(graph, {"gateway.a", "gateway.b"}) == ["gateway.a", "gateway.b",
                                                               "gateway.a"]

"""The house rules of the package, checked on its source: no import cycle between fmprobe's
modules (module-level or inside functions), no function longer than the limit, no module or
test reaching into another module's private names, and every command a thin wrapper."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fmprobe"
MAX_FUNCTION_LINES = 120
MAX_COMMAND_LINES = 40


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The fmprobe modules ``name`` imports (``from pkg import sub`` counts as pkg.sub when
    sub is a module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fmprobe")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("fmprobe"):
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


def _graph() -> dict[str, set[str]]:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # a package's __init__ that re-exports its submodules is not a dependency of those
    # submodules on each other: drop edges from a package to its own submodules
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk saw the package
    assert "fmprobe.sweep.units" in graph["fmprobe.sweep.api"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` (a command's option decorators are declarations, not logic), the
    docstring left out (documentation is not length)."""
    start = node.lineno
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        start += (first.end_lineno or first.lineno) - first.lineno + 1
    return (node.end_lineno or node.lineno) - start + 1


def _functions(path: Path) -> list[tuple[str, int]]:
    return [
        (node.name, _length(node))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_is_longer_than_the_limit() -> None:
    long = [
        f"{_module_name(p)}.{name} ({lines} lines)"
        for p in MODULES.values()
        for name, lines in _functions(p)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_commands_are_thin_wrappers() -> None:
    """A click command's body (decorators excluded) parses options and calls the library."""
    fat = []
    for name, path in MODULES.items():
        if not name.startswith("fmprobe.cli.") or name == "fmprobe.cli.common":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                body = _length(node)
                if body > MAX_COMMAND_LINES:
                    fat.append(f"{name}.{node.name} ({body} lines)")
    assert not fat, f"commands over {MAX_COMMAND_LINES} lines: {', '.join(fat)}"


def _private_imports(path: Path, own: str | None) -> list[str]:
    """``from fmprobe.x import _name`` and ``module._name`` uses of another module."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fmprobe"):
            if node.module == own:
                continue
            found += [
                f"{node.module}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


@pytest.mark.parametrize("where", ["fmprobe", "tests"])
def test_no_private_name_is_imported_from_another_module(where: str) -> None:
    paths = MODULES.items() if where == "fmprobe" else (
        (p.stem, p) for p in sorted((ROOT / "tests").glob("*.py"))
    )  # fmt: skip
    bad = [f"{name}: {imp}" for name, p in paths for imp in _private_imports(p, name)]
    assert not bad, "; ".join(bad)

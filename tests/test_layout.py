"""The layout's promises, checked on the source: the runtime imports nothing from the lab, and no
first-party modules import each other in a circle. Module-level imports count, type-checking-only ones
too (a type-only back edge is still a design circle: the callee calls back into its caller); imports
inside functions are deliberate late binding and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("models", "services", "sdk/tessera")
FIRST_PARTY = ("models", "services", "lab", "tessera", "loadtest")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "sdk") if path.is_relative_to(ROOT / "sdk") else path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_test(path: Path) -> bool:
    return path.name.startswith("test_") or path.name == "conftest.py"


GENERATED = (ROOT / "sdk/tessera/v1", ROOT / "sdk/tessera/worker")  # protoc output


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py")
                  if not any(p.is_relative_to(g) for g in GENERATED))


def _top_level_imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """First-party modules imported at module level. `from pkg import sub` names the submodule only:
    importing a submodule runs its package's __init__ first, which is how packages work, not a circle."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                subs = {f"{base}.{a.name}" for a in node.names} & modules
                found.update(subs)
                if len(subs) < len(node.names):  # some names are the package's own attributes
                    found.add(base)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in _sources("models", "services", "lab", "loadtest", "sdk/tessera")
             if not _is_test(p)}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        graph[mod] = {m for m in _top_level_imports(path, mod, set(files)) if m in files and m != mod}
    return graph


def test_runtime_imports_nothing_from_the_lab() -> None:
    offenders = []
    for top in RUNTIME:
        for path in _sources(top):
            if _is_test(path):
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):  # function-level imports count too: the lab must not be needed
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "lab"]
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the tree
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)

"""The import graph of the pipeline package, read from the source (every import, function-level ones too), by
module and by package of the design."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def module_file(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(module: str, parents: bool = True) -> set[str]:
    """The pipeline modules ``module`` imports by name; with ``parents``, also their parent packages,
    which Python runs first."""
    tree = ast.parse(module_file(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "pipeline" and module_file(name).exists():
                parts = name.split(".")
                found |= {".".join(parts[:i]) for i in range(1 if parents else len(parts), len(parts) + 1)}
    return found - {module}


def closure(*modules: str) -> set[str]:
    """Every pipeline module that importing ``modules`` may run (parents included)."""
    seen, todo = set(), [p for m in modules for p in (".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 2))]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imported_modules(m))
    return seen


def all_modules() -> list[str]:
    return sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                  for p in (ROOT / "pipeline").rglob("*.py"))


def graph() -> dict[str, set[str]]:
    """Each pipeline module -> the pipeline modules it imports by name (function-level imports included)."""
    return {m: imported_modules(m, parents=False) for m in all_modules()}


def package(module: str) -> str:
    """The package of the design ``module`` is in (``pipeline.heads`` for ``pipeline.heads.knn``); a top-level
    module is its own."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Each package (or top-level module) -> the other packages and top-level modules its modules import."""
    out: dict[str, set[str]] = {}
    for m, imported in graph().items():
        out.setdefault(package(m), set()).update(package(n) for n in imported if package(n) != package(m))
    return out


def cycles(edges: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Import cycles in ``edges`` (default: among pipeline modules, each edge an import by name)."""
    edges = graph() if edges is None else edges
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in edges:
        if m not in state:
            visit(m, [m])
    return found


def files(modules: set[str]) -> set[str]:
    return {module_file(m).relative_to(ROOT).as_posix() for m in modules}

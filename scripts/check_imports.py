"""Check the import rules of the tree: ``python -m scripts.check_imports`` (exit 1 on a violation).

1. Plugins (``backends/*/src``, ``adapters/*/src``) import only public core modules: no dotted
   component of a ``coro_durable`` import may begin with ``_`` (``coro_durable._core``,
   ``coro_durable.store._sqlite``, ``from coro_durable import _codec`` are all refused).
2. The core's subpackages import only the layers below them (``LAYERS``: what each may import, as
   its ``__init__`` docstring says), so there are no cycles between subpackages.
3. The core has no import cycle between modules, counting imports inside functions (a lazy
   import is still a cycle) and leaving out ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "coro_durable"
PLUGIN_SOURCES = sorted([*ROOT.glob("backends/*/src"), *ROOT.glob("adapters/*/src")])

#: Each core part and the parts it may import ("" is the package's own ``__init__``).
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "workflow": {"errors"},
    "_core": {"errors", "workflow"},
    "journal": {"errors", "_core"},
    "store": {"errors", "_core", "journal"},
    "runtime": {"errors", "_core", "workflow", "journal", "store"},
    "engine": {"errors", "_core", "workflow", "journal", "runtime"},
    "testing": {"errors", "_core", "workflow", "journal", "store", "runtime"},
    "cli": {"errors", "_core", "workflow", "journal", "store", "runtime"},
    "__main__": {"cli"},
    "": {"errors", "_core", "workflow", "journal", "store", "runtime"},
}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, module: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, []
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                yield child.lineno, target, [a.name for a in child.names]
            yield from walk(child)

    yield from walk(tree)


def plugin_violations() -> list[str]:
    found = []
    for src in PLUGIN_SOURCES:
        for path in sorted(src.rglob("*.py")):
            for line, target, names in imports(path, module_name(path, src)):
                if target != "coro_durable" and not target.startswith("coro_durable."):
                    continue
                dotted = target.split(".") + (names if target == "coro_durable" else [])
                private = [part for part in dotted if part.startswith("_")]
                if private:
                    where = path.relative_to(ROOT)
                    found.append(f"{where}:{line}: imports private {target} ({private[0]})")
    return found


def core_graph() -> dict[str, set[str]]:
    """Module -> the core modules it imports (``from pkg import name`` counts ``pkg.name`` when
    that is a module, else ``pkg``)."""
    src = CORE.parent
    modules = {module_name(p, src): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, set())
        for _line, target, names in imports(path, module):
            if target not in modules:
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            edges.update(subs or [target])
            if len(subs) < len(names):
                edges.add(target)
        edges.discard(module)
    return graph


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        mine = part_of(module)
        for target in sorted(targets):
            theirs = part_of(target)
            if theirs != mine and theirs not in LAYERS.get(mine, set()):
                found.append(
                    f"{module} imports {target}: {mine or 'coro_durable'} may not import {theirs}"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search (one representative per back edge)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def problems() -> list[str]:
    graph = core_graph()
    found = plugin_violations() + layer_violations(graph)
    found += ["import cycle: " + " -> ".join(cycle) for cycle in cycles(graph)]
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem)
    if found:
        print(f"{len(found)} import rule(s) broken (see scripts/check_imports.py)")
        return 1
    print("imports ok: plugins use public core modules only; the core has no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Finds import circles inside hf_specdec: modules that import each other, directly or through others.

Every `import` counts, also those inside functions (a function-level import still ties the two modules together
and hides a circle rather than removing it); only imports under `if TYPE_CHECKING:` are skipped, because they never
run. Prints each circle (a strongly connected component of more than one module, or a module importing itself) and
exits 1 when there is one.

    python scripts/import_cycles.py [package_dir]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, this: str, is_package: bool) -> list[str]:
    """Absolute names this node's statements import, walking into functions but not into TYPE_CHECKING blocks."""
    found: list[str] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            # only the else branch runs
            found += _imports(ast.Module(body=child.orelse, type_ignores=[]), this, is_package)
            continue
        if isinstance(child, ast.Import):
            found += [alias.name for alias in child.names]
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                package = this.split(".") if is_package else this.split(".")[:-1]
                package = package[: len(package) - (child.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from pkg import name` may import the submodule pkg.name: count it when that module exists.
            found += [base] + [f"{base}.{alias.name}" for alias in child.names]
        else:
            found += _imports(child, this, is_package)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = _imports(tree, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so a deep package cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def import_cycles(package_dir: Path) -> list[list[str]]:
    graph = import_graph(package_dir)
    return [c for c in strongly_connected(graph) if len(c) > 1]


def main(argv: list[str]) -> int:
    package_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "hf_specdec"
    graph = import_graph(package_dir)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    for cycle in cycles:
        print(f"import circle of {len(cycle)} modules:")
        members = set(cycle)
        for name in cycle:
            print(f"  {name} -> {', '.join(sorted(graph[name] & members))}")
    if not cycles:
        print(f"no import circle among {len(graph)} modules")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The import graph of cdiff_jax: its depth (longest import chain), its cycles and its upward imports.

    python bench/import_graph.py [--root REPO]

Every module is parsed with `ast`, never imported, and every `import` counts, also those inside
functions (a lazy import is still a dependency; it only hides a cycle). `--root` reads another
checkout (e.g. `git worktree add ../old COMMIT`) against the layer table of this one, which lives
in tests/test_layering.py: that test asserts what this script prints.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "cdiff_jax"
# setup.py installs these folders as sub-packages (package_dir).
EXTRA_PACKAGE_DIRS = {"cdiff_jax.configs": "configs"}


def package_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> source file, for the package and its installed extra folders."""
    folders = {PACKAGE: root / PACKAGE, **{name: root / rel for name, rel in EXTRA_PACKAGE_DIRS.items()}}
    modules = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every dotted name an import statement anywhere in `tree` names (`from a import b`: a.b)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: pathlib.Path = REPO) -> dict[str, set[str]]:
    """Module -> the package modules it imports (the longest known prefix of each imported name)."""
    modules = package_modules(root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            known = next(
                (".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None
            )
            # `from cdiff_jax.nn import lpips` names that module, `from cdiff_jax.config import X` config.
            if known is not None and known != module:
                targets.add(known)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def longest_chains(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Module -> its longest chain of imports (module first); members of a cycle count as one step."""
    component_of = {m: tuple(c) for c in cycles(graph) for m in c}
    chains: dict[str, list[str]] = {}

    def chain(node):
        if node not in chains:
            chains[node] = [node]  # guards the recursion inside a cycle
            mine = component_of.get(node, (node,))
            below = [chain(s) for s in sorted(graph[node]) if s not in mine]
            chains[node] = [node] + max(below, key=len, default=[])
        return chains[node]

    for node in sorted(graph):
        chain(node)
    return chains


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index in `layers` of the longest prefix that covers `module` (None: unlisted)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            full = f"{PACKAGE}.{prefix}" if prefix else PACKAGE  # "": the package's own __init__ only
            if (module == full or (prefix and module.startswith(full + "."))) and len(full) > best_len:
                best, best_len = i, len(full)
    return best


def upward_imports(graph: dict[str, set[str]], layers) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer than its importer."""
    return sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if None not in (layer_of(a, layers), layer_of(b, layers)) and layer_of(b, layers) > layer_of(a, layers)
    )


def _layer_table():
    spec = importlib.util.spec_from_file_location("_layering_table", REPO / "tests" / "test_layering.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LAYERS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=pathlib.Path, default=REPO, help="checkout to read (default: this one)")
    args = parser.parse_args(argv)
    graph = import_graph(args.root)
    layers = _layer_table()
    chains = longest_chains(graph)
    deepest = max(chains.values(), key=len)
    print(f"{args.root}: {len(graph)} modules, {sum(map(len, graph.values()))} imports between them")
    print(f"levels (modules in the longest import chain): {len(deepest)}")
    print("  " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in deepest))
    found = cycles(graph)
    print(f"cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    unlisted = sorted(m for m in graph if layer_of(m, layers) is None)
    if unlisted:
        print(f"modules in no layer: {', '.join(unlisted)}")
    upward = upward_imports(graph, layers)
    print(f"upward imports: {len(upward)}")
    for a, b in upward:
        print(f"  {a} ({layers[layer_of(a, layers)][0]}) -> {b} ({layers[layer_of(b, layers)][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's import layering, read from the source (every import statement, also those inside functions).

- No import cycle among the package's modules.
- `modeling_capt/` (what `trust_remote_code=True` downloads and runs) is flat and imports only the standard library,
  torch, transformers (with safetensors, which transformers requires) and its own files, relatively (so
  `save_pretrained` copies them into a checkpoint).
- `dataset_scripts/` never imports `trainers/` (data and the Confusion Bank sit below training).
"""

from __future__ import annotations

import ast
import os
import sys

import pytest

from conftest import REPO_ROOT


PACKAGES = ("modeling_capt", "dataset_scripts", "trainers")


def package_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the three packages."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def imports_of(module: str, path: str, modules) -> list[tuple[str, bool]]:
    """`(imported name, relative?)` for every import in the file; a `from package import name` that names a module
    counts as importing that module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, bool(node.level)))
            found += [(f"{target}.{alias.name}", bool(node.level)) for alias in node.names
                      if f"{target}.{alias.name}" in modules]
    return found


def import_graph():
    modules = package_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imports_of(name, path, modules):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dataset_scripts_never_import_trainers():
    graph = import_graph()
    upward = sorted((name, target) for name, targets in graph.items() if name.startswith("dataset_scripts")
                    for target in targets if target.startswith("trainers"))
    assert upward == []


def test_the_shipped_folder_imports_only_stdlib_torch_transformers_and_itself():
    modules = package_modules()
    # safetensors is a hard requirement of transformers (it saves and loads every checkpoint with it), so any place
    # that runs transformers has it
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "safetensors"}
    shipped = {name: path for name, path in modules.items() if name.startswith("modeling_capt")}
    assert all(os.path.dirname(path) == os.path.join(REPO_ROOT, "modeling_capt") for path in shipped.values()), \
        "modeling_capt/ must stay flat"
    for name, path in shipped.items():
        for target, relative in imports_of(name, path, modules):
            if relative or target == "__future__":
                continue
            assert target.split(".")[0] in allowed, f"{path} imports {target}"
            if target.startswith("modeling_capt"):
                pytest.fail(f"{path} imports {target} absolutely: save_pretrained copies only relative imports")

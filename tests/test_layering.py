"""The package's import rules, read from the source (no import needed): the core never reaches the CLI, no cycles, no
private names across modules, heavy libraries only inside functions on the light paths."""

import ast
from pathlib import Path

import pytest

import llmkit
import llmkit.commands
import llmkit.presets

from helpers import HEAVY_MODULES

# modules `llmkit --help`, completion, memory-estimate and launch --dry-run import: heavy libraries only in functions
LIGHT = ("llmkit", "llmkit.__main__", "llmkit.errors", "llmkit.config", "llmkit.configio", "llmkit.presets",
         "llmkit.modelspec", "llmkit.memory", "llmkit.ui", "llmkit.launch", "llmkit.translate",
         "llmkit.training.integrations")


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (wherever its directory lives)."""
    roots = [("llmkit", Path(llmkit.__file__).parent), ("llmkit.commands", Path(llmkit.commands.__file__).parent),
             ("llmkit.presets", Path(llmkit.presets.__file__).parent)]
    found: dict[str, Path] = {}
    for package, root in roots:
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            if package == "llmkit" and parts and parts[0] in ("commands", "presets"):
                continue   # found under their own root (the package may map them from elsewhere)
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported name or None, at module level?, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    # imports inside `if TYPE_CHECKING:` are for annotations only
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for n in ast.walk(node)}
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, id(node) in top_level, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:
                yield module, alias.name, id(node) in top_level, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for module, attr, _, _ in _imports(name, path):
            if attr and f"{module}.{attr}" in MODULES:
                targets.add(f"{module}.{attr}")
            elif module in MODULES:
                targets.add(module)
        targets.discard(name)
        graph[name] = targets
    return graph


def test_the_tree_is_found():
    assert "llmkit.commands.sft" in MODULES and "llmkit.training.trainer" in MODULES and "llmkit.presets" in MODULES


def test_the_core_never_imports_the_cli_or_typer():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("llmkit.commands") or name == "llmkit.__main__":
            continue
        for module, _, _, line in _imports(name, path):
            if module.startswith("llmkit.commands") or module.split(".")[0] in ("typer", "click"):
                offenders.append(f"{path}:{line} imports {module}")
    assert not offenders, offenders


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):   # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            # a package importing its own submodules to register them is the package's job, not a cycle
            inner = {m for m in component if not any(o != m and o.startswith(m + ".") for o in component)}
            if len(component) > 1 and len(inner) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in MODULES.items():
        for module, attr, _, line in _imports(name, path):
            if (module.startswith("llmkit") and module != name and attr and attr.startswith("_")
                    and not attr.startswith("__") and f"{module}.{attr}" not in MODULES):
                offenders.append(f"{path}:{line}: from {module} import {attr}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("llmkit.commands") or n in LIGHT))
def test_light_modules_import_heavy_libraries_only_inside_functions(name):
    offenders = [f"{MODULES[name]}:{line} imports {module}" for module, _, top, line in _imports(name, MODULES[name])
                 if top and module.split(".")[0] in HEAVY_MODULES]
    assert not offenders, offenders

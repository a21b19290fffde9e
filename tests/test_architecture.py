"""The layer contract of ARCHITECTURE.md, checked on every import in src/ (function-local ones too).

A module may import from its own layer or from layers above it in ARCHITECTURE.md's list,
never from a layer below; no module-level import cycle may exist between modules; and no
name starting with `_` is imported from another module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "posttrain"

# ARCHITECTURE.md "Layers", top to bottom. Units on one row share a layer; a tuple inside a row
# is an order within the layer (quality < synth < judge < evaluate < ab < safety).
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "jsonl", "records", "config", "trl_names", "cache", "resources"),
    ("models",),
    ("data",),
    ("losses",),
    ("distributed",),
    ("train",),
    ("rollout",),
    ("rl",),
    ("quality",), ("synth",), ("judge",), ("evaluate",), ("ab",), ("safety",),
    ("serve",),
    ("report",), ("pipeline",),
    ("cli", "__main__", "commands", "generate", "cai_command", "demo", "demo_format"),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path):
    """(target module, imported names, line, at module level) for every posttrain import in a file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "posttrain" or target.startswith("posttrain."):
                yield target, [alias.name for alias in node.names], node.lineno, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("posttrain"):
                    yield alias.name, [], node.lineno, id(node) in top_level


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(path)) for path in SOURCES}
    missing = sorted(units - set(RANK))
    assert not missing, f"place these in ARCHITECTURE.md's layer list and in LAYERS here: {missing}"


def test_imports_only_go_up_the_layer_list():
    wrong = []
    for path in SOURCES:
        source = unit_of(module_name(path))
        for target, names, line, _ in imports(path):
            # `from posttrain import x` names a unit; `from . import __version__` names the package.
            targets = [f"{target}.{name}" for name in names] if target == "posttrain" else [target]
            for full in targets:
                unit = unit_of(full) if unit_of(full) in RANK else "__init__"
                if RANK[unit] > RANK[source]:
                    wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {source} imports {full} (a lower layer)")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_imported_from_another_module():
    wrong = [f"{path.relative_to(SRC.parent)}:{line}: imports {name} from {target}"
             for path in SOURCES for target, names, line, _ in imports(path)
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


def _module_graph() -> dict[str, set[str]]:
    known = {module_name(path) for path in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        edges = graph.setdefault(module_name(path), set())
        for target, names, _, _ in imports(path):
            for candidate in [f"{target}.{name}" for name in names] + [target]:
                if candidate in known and candidate != module_name(path):
                    edges.add(candidate)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a list of modules) or None; function-local imports count too."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_between_modules():
    graph = _module_graph()
    # A package's __init__ re-exports its modules (posttrain.data -> posttrain.data.formats); an edge
    # from a module to its own package's __init__ is that re-export, not a dependency.
    for module, edges in graph.items():
        edges.discard(module.rsplit(".", 1)[0])
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("unit", ["losses"])
def test_losses_import_no_models_or_modules_beyond_tensor_helpers(unit):
    """losses/ stays pure: it may read constants and tensor helpers, never load a model or data file."""
    allowed = {"posttrain.models.logprobs", "posttrain.data.tokenize"}
    for path in (SRC / unit).rglob("*.py"):
        for target, _, line, _ in imports(path):
            if unit_of(target) != unit:
                assert target in allowed, f"{path.name}:{line}: losses import {target}"

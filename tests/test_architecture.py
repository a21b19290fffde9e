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
    ("__init__", "errors", "jsonl", "records", "config", "trl_names", "cache", "resources", "allocator"),
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
    ("cli", "__main__", "commands"),
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
    # Imports under `if TYPE_CHECKING:` are for annotations only: never executed, so never a cycle.
    type_only = {id(inner) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
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
            for candidate in [LAZY.get(target, {}).get(name, f"{target}.{name}") for name in names] + [target]:
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


# Packages that take seconds to import or are optional extras: a function-local import of one
# of these (or of a posttrain module that imports one at its top) is allowed, so that
# `posttrain --help`, `posttrain CMD --help` and argument errors stay instant.
HEAVY = {"torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "matplotlib", "lm_eval",
         "sacrebleu", "rouge_score", "bert_score", "bitsandbytes", "deepspeed", "gguf", "scipy", "numpy",
         "pandas", "pyarrow", "fastapi", "uvicorn", "httpx", "tensorboard", "wandb", "mlflow", "sklearn",
         "markdown_it", "nh3", "jsonschema", "yaml", "jinja2", "tqdm", "playwright", "tokenizers",
         "huggingface_hub", "safetensors"}


def lazy_exports() -> dict[str, dict[str, str]]:
    """{package: {name: module}} for packages whose __init__ loads names lazily (an `_EXPORTS` table):
    `from posttrain.models import load_model` really imports posttrain.models.loading."""
    tables = {}
    for path in SOURCES:
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                package = module_name(path)
                tables[package] = {name: f"{package}.{module}" for name, module in ast.literal_eval(node.value).items()}
    return tables


LAZY = lazy_exports()


def test_lazy_export_tables_are_read():
    assert LAZY["posttrain.models"]["load_model"] == "posttrain.models.loading"


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at a file's top level (incl. inside top-level if/try, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes += list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else [node]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {LAZY.get(target, {}).get(alias.name, f"{target}.{alias.name}") for alias in node.names}
    return found


def heavy_modules() -> set[str]:
    """posttrain modules whose top-level imports reach a HEAVY package (directly or through other modules)."""
    known = {module_name(path): path for path in SOURCES}
    direct = {name: _top_level_imports(path) for name, path in known.items()}
    heavy = {name for name, found in direct.items() if any(f.split(".")[0] in HEAVY for f in found)}
    changed = True
    while changed:
        changed = False
        for name, found in direct.items():
            if name not in heavy and any(f in heavy for f in found):
                heavy.add(name)
                changed = True
    return heavy


def test_local_imports_only_for_heavy_or_optional_modules():
    """Imports go at the top, except a heavy package (or a module that loads one) kept out of
    `--help` and argument checking; everything else imported inside a function is a defect."""
    heavy = heavy_modules()
    known = {module_name(path) for path in SOURCES}
    wrong = []
    # resources/ holds scripts that run on their own (the sandbox supervisor imports after it has
    # locked itself down), not library modules.
    for path in [p for p in SOURCES if "resources" not in p.parts]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        top = set()
        for node in tree.body:
            top |= {id(n) for n in ast.walk(node)} if isinstance(node, (ast.If, ast.Try)) else {id(node)}
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if isinstance(node, ast.ImportFrom):
                targets = [LAZY.get(target, {}).get(a.name)
                           or (f"{target}.{a.name}" if f"{target}.{a.name}" in known else target) for a in node.names]
            if any(t.split(".")[0] == "posttrain" and t in heavy for t in targets):
                continue  # one heavy name keeps the statement local
            for target in targets:
                root = target.split(".")[0]
                if root != "posttrain" and root in HEAVY | {"resource", "ctypes", "fcntl", "readline"}:
                    continue
                if root == "posttrain" and target in heavy:
                    continue
                if root not in ("posttrain",) and root not in HEAVY:
                    # A standard-library module: always cheap, belongs at the top.
                    wrong.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {ast.unparse(node)}")
                    break
                if root == "posttrain":
                    wrong.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {ast.unparse(node)} (a light module)")
                    break
    assert not wrong, f"{len(wrong)} function-local imports to move to the top:\n" + "\n".join(wrong)

"""The shape of the tree, kept: commands at the top, packages that depend only downwards, no import cycle
(imports inside functions counted), no module reaching for another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "poc59"

# What each package may import (besides itself): the layers of the README's Architecture section.
# metrics (the registry) stands on core alone, below data and model: every other package may use it.
ALLOWED = {
    "core": set(),
    "metrics": {"core"},
    "data": {"core", "metrics"},
    "model": {"core", "metrics"},
    "analysis": {"core", "metrics", "model"},
    "artifacts": {"core", "metrics", "model", "analysis"},
    "inference": {"core", "metrics", "data", "analysis", "artifacts"},
    "evaluation": {"core", "metrics", "data", "model", "analysis", "artifacts", "inference", "tracking"},
    "tracking": {"core", "metrics", "analysis"},
    "training": {"core", "metrics", "data", "model", "analysis", "artifacts", "tracking"},
    "comparison": {"core", "metrics", "data", "analysis", "evaluation", "training", "tracking"},
    "serving": {"core", "metrics", "data", "analysis", "artifacts", "inference"},
    "annotation": {"core", "metrics", "data", "analysis", "artifacts", "inference"},
}
OPTIONAL = {"onnxruntime", "fcntl", "matplotlib", "mlflow", "wandb", "optuna"}  # may be imported inside a function


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(f.read_text(), str(f))
    return out


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, list[str], bool]]:
    """(node, imported names as module paths, whether at the module's top level) of every import."""
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node, [node.module] + [f"{node.module}.{a.name}" for a in node.names], id(node) in top))
    return found


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_the_top_level_holds_only_commands_and_packages():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 12, top
    for name in top:
        defined = {n.name for n in MODULES[f"poc59.{name}"].body if isinstance(n, ast.FunctionDef)}
        assert "main" in defined, f"poc59.{name} stands at the top but is no command (no main)"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(ALLOWED), packages


def _edges(m: str) -> set[str]:
    """The other poc59 modules `m` imports (imports inside functions counted)."""
    return {_resolve(n) for _, names, _ in _imports(MODULES[m]) for n in names if n.startswith("poc59")} - {None, m}


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {m: _edges(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t) :] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_packages_import_only_the_layers_below_them():
    for m, tree in MODULES.items():
        parts = m.split(".")
        if len(parts) < 3:
            continue  # the commands may join any packages
        package = parts[1]
        for node, names, _ in _imports(tree):
            used = {n.split(".")[1] for n in names if n.startswith("poc59.") and n.count(".") >= 1}
            used = {u for u in used if u in ALLOWED}
            assert used <= ALLOWED[package] | {package}, f"{m} line {node.lineno} imports {sorted(used)}"


# core.config's resolvers import torch only when a config resolves them: every command imports core.config
# before parsing its arguments, and `--help` must not wait for torch.
LAZY = {"poc59.core.config": {"torch", "poc59.core.device"}}


def test_imports_inside_functions_are_for_optional_dependencies_only():
    """...and in the commands, which import the libraries after parsing their arguments (a fast start)."""
    for m, tree in MODULES.items():
        if m.count(".") == 1:
            continue  # a command (poc59.<name>)
        for node, names, at_top in _imports(tree):
            if at_top or names[0] in LAZY.get(m, ()):
                continue
            assert names[0].split(".")[0] in OPTIONAL, f"{m} line {node.lineno} imports {names[0]} inside a function"


def test_no_module_imports_another_modules_private_names():
    for m, tree in MODULES.items():
        for node, _, _ in _imports(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("poc59"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{m} line {node.lineno} imports {private} from {node.module}"


def test_bench_and_tests_use_public_names_and_tests_do_not_import_bench():
    repo = SRC.parent
    for f in sorted([*(repo / "bench").rglob("*.py"), *(repo / "tests").rglob("*.py")]):
        in_tests = f.is_relative_to(repo / "tests")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("poc59"):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{f} line {node.lineno} imports {private} from {node.module}"
                assert not (in_tests and node.module.split(".")[0] == "bench"), f"{f} line {node.lineno}"
            if isinstance(node, ast.Import) and in_tests:
                assert all(a.name.split(".")[0] != "bench" for a in node.names), f"{f} line {node.lineno}"


# The commands a conservator runs on a laptop: Lightning (with torchmetrics, scipy and matplotlib) is about 4 s of
# a cold start there, and none of them trains.
WITHOUT_LIGHTNING = ("poc59.predict", "poc59.serve", "poc59.annotate", "poc59.weights")


def _reached(start: str) -> set[str]:
    """The poc59 modules `start` may import, itself included (imports inside functions counted)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _edges(m)
    return seen


@pytest.mark.parametrize("command", WITHOUT_LIGHTNING)
def test_the_commands_that_do_not_train_never_import_lightning(command):
    heavy = sorted(
        f"{m} line {node.lineno} imports {names[0]}"
        for m in _reached(command)
        for node, names, _ in _imports(MODULES[m])
        if names[0].split(".")[0] in ("lightning", "torchmetrics")
    )
    assert not heavy, f"{command} reaches Lightning: {heavy}"

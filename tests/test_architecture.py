"""The shape of the package: imports point down (no cycle between top-level modules and subpackages), no module
imports another's private name, registries list what their modules register, the CLI starts without torch, and
modules and functions stay readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [a.name for a in node.names]
            submodules = [f"{node.module}.{n}" for n in names if is_module(f"{node.module}.{n}")]
            out += [(m, []) for m in submodules] + [(node.module, [n for n in names if not is_module(
                f"{node.module}.{n}")])]
    return [(m, n) for m, n in out if m == "cnnlab" or m.startswith("cnnlab.")]


def unit(module: str) -> str:
    """The top-level piece a module belongs to: cnnlab.api, or a subpackage such as cnnlab.train."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = unit(module_name(path))
        for target, _ in imported_modules(path):
            if unit(target) != source:
                graph.setdefault(source, set()).add(unit(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_top_level_modules_and_subpackages():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_lower_floors_never_import_the_top_layer():
    top = {"cnnlab.api", "cnnlab.session", "cnnlab.recipe", "cnnlab.inference", "cnnlab.runs", "cnnlab.cli",
           "cnnlab.prepare", "cnnlab.results", "cnnlab.tune", "cnnlab.doctor", "cnnlab.report", "cnnlab.export"}
    graph = import_graph()
    for floor in ("cnnlab.data", "cnnlab.models", "cnnlab.train", "cnnlab.transfer", "cnnlab.tasks", "cnnlab.config"):
        assert not graph.get(floor, set()) & top, (floor, graph.get(floor, set()) & top)


def test_no_module_imports_a_private_name_of_another():
    offenders = [f"{module_name(p)}: from {m} import {n}" for p in PACKAGE.rglob("*.py")
                 for m, names in imported_modules(p) for n in names if n.startswith("_") and n != "__version__"]
    assert offenders == []


def test_modules_and_functions_stay_readable():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 420:
            long_modules.append(module_name(path))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{module_name(path)}.{node.name}")
    assert long_modules == [] and long_functions == []


@pytest.mark.parametrize("module,registry", [("cnnlab.models.registry", "MODELS"), ("cnnlab.train.optim", "OPTIMIZERS"),
                                             ("cnnlab.train.optim", "SCHEDULES"),
                                             ("cnnlab.tasks.classification.losses", "LOSSES"),
                                             ("cnnlab.tasks.base", "TASKS")])
def test_registered_names_read_from_source_equal_the_registered_ones(module, registry):
    import importlib

    from cnnlab.config import fields

    reg = getattr(importlib.import_module(module), registry)
    reg.load()
    registered = set(reg.registered())
    if registry in ("MODELS", "TASKS"):
        from cnnlab.config.schema import TASK_MODULES
        from cnnlab.models.registry import ARCHITECTURES
        from cnnlab.registry import scan_registrations

        modules, decorator = (ARCHITECTURES, "register_model") if registry == "MODELS" else (TASK_MODULES,
                                                                                              "register_task")
        scanned = {n for m in modules for n in scan_registrations(m, decorator)}
    else:
        path = {"OPTIMIZERS": "train.optimizer", "SCHEDULES": "train.schedule", "LOSSES": "train.loss"}[registry]
        scanned = set(next(f for f in fields() if f.path == path).choices())
    assert scanned == registered


def test_help_version_and_models_do_not_import_torch():
    code = ("import sys, contextlib, io\nfrom cnnlab.cli import main\n"
            "for argv in (['--version'], ['--help'], ['train', '--help'], ['models']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_misspelt_model_is_refused_before_torch_is_imported():
    code = ("import sys\nfrom cnnlab.cli import main\n"
            "rc = main(['train', 'digits', '--model', 'seed_cn'])\n"
            "print(rc, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.split() == ["2", "False"]
    assert "unknown model 'seed_cn': did you mean seed_cnn" in out.stderr

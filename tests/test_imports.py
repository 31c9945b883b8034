"""The package's imports run one way: no cycles (module-level, function-level or type-only), no private
names across modules, at most 15 modules at the package's top, the table/figure modules importable without
torch, and the public API (``nemesis_analysis.__all__``) resolving lazily."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import nemesis_analysis

PACKAGE = "nemesis_analysis"
ROOT = Path(nemesis_analysis.__file__).parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    """(imported package module, imported name or None, line) for every import anywhere in ``module``.

    Imports under ``if TYPE_CHECKING:`` count too: a type-only cycle is still two modules that need each
    other. Importing ``a.b`` counts as an edge to ``a.b`` only: a package's ``__init__`` importing its own
    submodules is how registries are filled, and would otherwise read as a cycle with every submodule.
    """
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append((_known_prefix(alias.name), None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((_known_prefix(base), alias.name, node.lineno))
    return found


def _known_prefix(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    return {m: {target for target, _, _ in imports_of(m) if target and target != m} for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative DFS with colours)."""
    colour = {node: 0 for node in graph}  # 0 new, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif colour.get(child) == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_type_only_imports_are_edges(tmp_path, monkeypatch):
    module = tmp_path / "typed.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nemesis_analysis.data.base import Sample\n"
    )
    monkeypatch.setitem(MODULES, f"{PACKAGE}.typed", module)
    assert (f"{PACKAGE}.data.base", "Sample", 3) in imports_of(f"{PACKAGE}.typed")


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports() -> list[str]:
    """``from pkg.mod import _name`` and ``mod._name`` (``mod`` a package module bound by an import)."""
    problems = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text())
        bound: dict[str, str] = {}
        for target, name, line in imports_of(module):
            if name is not None and _is_private(name) and target != module:
                problems.append(f"{module}:{line} imports {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if isinstance(node, ast.ImportFrom):
                        full, local = f"{_resolve(module, node)}.{alias.name}", alias.asname or alias.name
                    else:
                        full, local = alias.name, alias.asname
                    if local and full in MODULES and full != module:
                        bound[local] = full
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _is_private(node.attr)
            ):
                problems.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return problems


def test_no_module_imports_a_private_name_from_another():
    problems = private_imports()
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "module",
    [
        "storage.schema",
        "report.analysis",
        "report.plots",
        "storage.store",
        "report.figures",
        "report.summaries",
        "report.tables",
        "config",
        "cli",
    ],
)
def test_module_imports_without_torch(module):
    code = f"import sys, nemesis_analysis.{module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"importing nemesis_analysis.{module} imports torch"


def test_dataset_registry_imports_no_reader_and_is_complete_whatever_is_imported_first():
    readers = {f"{PACKAGE}.data.{name}" for name in ("coop", "embedded", "custom", "specs", "diagnose", "fixtures")}
    assert not {target for target, _, _ in imports_of(f"{PACKAGE}.data.registry")} & readers
    source = MODULES[f"{PACKAGE}.data.registry"].read_text()
    assert "except ImportError" not in source  # a broken reader must fail loudly, not read as "unknown dataset"
    code = (
        "import nemesis_analysis.data.registry as r; "
        "print(len(r.dataset_names()), 'digits' in r.DATASETS, sorted(r.DATASET_KINDS))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=120)
    assert result.stdout.strip().split(maxsplit=2) == ["16", "True", "['folder', 'manifest']"], (
        result.stdout + result.stderr
    )


def test_at_most_15_modules_at_the_package_top():
    top = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 15, f"{len(top)} modules directly in {PACKAGE}/: {', '.join(top)}; group them in a subpackage"


def test_every_public_name_resolves_to_its_module():
    exports = nemesis_analysis._EXPORTS
    assert set(nemesis_analysis.__all__) == {"__version__", *exports}
    for name in exports:
        assert getattr(nemesis_analysis, name) is getattr(importlib.import_module(exports[name]), name), name
    assert set(nemesis_analysis.__all__) <= set(dir(nemesis_analysis))
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        nemesis_analysis.train  # noqa: B018  (a module name is not a public name)


def test_public_table_and_figure_names_import_no_torch():
    exports = nemesis_analysis._EXPORTS
    light = [
        n
        for n, m in exports.items()
        if m.startswith((f"{PACKAGE}.report.", f"{PACKAGE}.storage.", f"{PACKAGE}.errors"))
    ]
    assert {"read_table", "frequency_figure", "summary_tables", "low_norm_frequency"} <= set(light)
    code = f"import sys; from nemesis_analysis import {', '.join(light)}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "a public table or figure name imports torch"


SUBPACKAGES = sorted({name.split(".")[1] for name in MODULES if name.count(".") >= 1})


def test_every_module_imports_first_in_a_fresh_interpreter():
    """A module that fails when it is the first one imported has a cycle through a package ``__init__`` that the
    graph above cannot see (importing ``a.b`` runs ``a/__init__.py`` first)."""
    code = (
        "import importlib, subprocess, sys\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True, text=True)\n"
        "    if r.returncode:\n"
        "        failed.append(name + ': ' + (r.stderr.strip().splitlines() or ['?'])[-1])\n"
        "print('\\n'.join(failed))\n"
    )
    packages = [f"{PACKAGE}.{name}" for name in SUBPACKAGES]
    code = code.replace(repr(sorted(MODULES)), repr(packages))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", "modules that cannot be imported first:\n" + result.stdout

"""No function over 80 lines (signature, docstring and body): long functions hide several jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import nemesis_analysis

ROOT = Path(nemesis_analysis.__file__).parent
LIMIT = 80


def long_functions(folder: Path, limit: int = LIMIT) -> list[str]:
    """``path:line name (N lines)`` of every function or method longer than ``limit`` lines under ``folder``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(folder.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_finder_measures_a_planted_long_function(tmp_path):
    (tmp_path / "long.py").write_text("def f():\n" + "    x = 1\n" * 80 + "\n\ndef g():\n    return 1\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/long.py:1 f (81 lines)"]
    assert long_functions(tmp_path, limit=81) == []


def test_no_function_is_over_80_lines():
    found = long_functions(ROOT)  # the whole package, CLI commands included
    assert not found, "functions over 80 lines:\n" + "\n".join(found)

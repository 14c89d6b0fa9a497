"""Imports go one way (DESIGN.md §1): checked on the source with ast, not by convention.

exporter and remediator import trainguard, never each other; trainguard imports neither.
torch/accelerate are heavy and version-fragile: never in trainguard/ or exporter/ (the
monitoring path must run where torch is broken), and in remediator/ only inside
functions, so importing the webhook app never loads them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.common import REPO

PACKAGES = ("trainguard", "exporter", "remediator")
FORBIDDEN = {"trainguard": {"exporter", "remediator"},
             "exporter": {"remediator"},
             "remediator": {"exporter"}}
HEAVY = {"torch", "accelerate"}


def _imports(tree: ast.AST) -> Iterator[tuple[str, int, bool]]:
    """(top-level module, line, inside a function) for every absolute import.

    ``importlib.import_module("x")`` and ``__import__("x")`` with a literal count too.
    """
    def walk(node: ast.AST, in_func: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                           | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], child.lineno, in_func
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], child.lineno, in_func
            elif isinstance(child, ast.Call) and child.args \
                    and isinstance(child.args[0], ast.Constant) \
                    and isinstance(child.args[0].value, str):
                fn = child.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("import_module", "__import__"):
                    yield child.args[0].value.split(".")[0], child.lineno, in_func
            yield from walk(child, nested)
    yield from walk(tree, False)


def violations(package: str, source: str, filename: str) -> list[str]:
    found = []
    for module, line, in_func in _imports(ast.parse(source, filename)):
        where = f"{filename}:{line}"
        if module in FORBIDDEN[package]:
            found.append(f"{where}: {package} imports {module}")
        if module in HEAVY and (package != "remediator" or not in_func):
            found.append(f"{where}: {package} imports {module} "
                         f"{'at module level' if package == 'remediator' else ''}".rstrip())
    return found


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_there_is_something_to_check() -> None:
    names = {p.relative_to(REPO).parts[0] for p in sources()}
    assert names == set(PACKAGES)


def test_imports_go_one_way() -> None:
    problems = []
    for path in sources():
        package = path.relative_to(REPO).parts[0]
        problems += violations(package, path.read_text(encoding="utf-8"),
                               str(path.relative_to(REPO)))
    assert problems == []


@pytest.mark.parametrize(("package", "source", "expected"), [
    ("trainguard", "import exporter.server\n", ["x.py:1: trainguard imports exporter"]),
    ("trainguard", "def f():\n    from remediator import app\n",
     ["x.py:2: trainguard imports remediator"]),
    ("exporter", "from remediator.store import Store\n", ["x.py:1: exporter imports remediator"]),
    ("remediator", "import exporter\n", ["x.py:1: remediator imports exporter"]),
    ("exporter", "def f():\n    import torch\n", ["x.py:2: exporter imports torch"]),
    ("trainguard", "import importlib\nimportlib.import_module('accelerate.utils')\n",
     ["x.py:2: trainguard imports accelerate"]),
    ("remediator", "import torch\n", ["x.py:1: remediator imports torch at module level"]),
    ("remediator", "class A:\n    import accelerate\n",
     ["x.py:2: remediator imports accelerate at module level"]),
    ("remediator", "def repair():\n    import torch\n    from accelerate import utils\n", []),
    ("exporter", "from trainguard.config import load_config\nfrom . import nvml\n", []),
])
def test_the_checker_catches_what_it_should(package: str, source: str,
                                            expected: list[str]) -> None:
    assert violations(package, source, "x.py") == expected

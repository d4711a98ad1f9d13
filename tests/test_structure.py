"""The package's layering, read from its source: what may import what, and how long a function may get."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dmat"
MAX_FUNCTION_LINES = 60


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports_any(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imports_of(SOURCES[module]) if any(i == p or i.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module", [m for m in SOURCES if m not in ("dmat.cli", "dmat.__main__")])
def test_nothing_below_the_cli_imports_it(module):
    assert _imports_any(module, ("dmat.cli",)) == []


def test_training_and_evaluation_do_not_import_each_other():
    assert _imports_any("dmat.training", ("dmat.evaluation",)) == []
    for module in (m for m in SOURCES if m.startswith("dmat.evaluation")):
        assert _imports_any(module, ("dmat.training",)) == [], module


@pytest.mark.parametrize("module", ["dmat.diffusion", "dmat.unet", "dmat.training", "dmat.checkpoint",
                                    "dmat.runtime", "dmat.measure", "dmat.recorder"])
def test_the_core_knows_no_mlflow(module):
    assert _imports_any(module, ("mlflow", "dmat.tracking")) == []


def test_no_function_is_longer_than_the_limit():
    too_long = []
    for module, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {lines} lines")
    assert too_long == []

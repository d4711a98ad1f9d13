"""The package's architecture, read from its source: which layer each module is in, what may import what (an
import chain counts), how long a function, class or module may get, and that the README's layout lists every
module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dmat"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 100
MAX_MODULE_LINES = 300
LONG_BECAUSE = "Longer than"  # a module or class docstring that says why it is longer than the limit

# Lowest first. A module imports its own package and the layers below it, never one above or beside it.
LAYERS = ("dmat.errors", "dmat.distributed", "dmat.runtime", "dmat.model", "dmat.config", "dmat.data",
          "dmat.training", "dmat.tracking", "dmat.serving", "dmat.stages", "dmat.evaluation", "dmat.report",
          "dmat.study", "dmat.cli")
TOP_LEVEL = ("dmat", "dmat.__main__")  # the package itself and `python -m dmat`, which only call the CLI


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """The dmat modules and outside packages `module` imports, at the top or inside a function. Importing
    `dmat.a.b` runs `dmat.a` too; `from dmat.a import b` imports the module `dmat.a.b` where there is one."""
    found = set()
    for node in ast.walk(ast.parse(SOURCES[module].read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in SOURCES or not name.startswith("dmat"):
                found.add(name if name.startswith("dmat") else name.split(".")[0])
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in SOURCES)
    return found - {module}


GRAPH = {module: imports_of(module) for module in SOURCES}


def chain(start: str, wanted) -> list[str] | None:
    """The shortest import chain from `start` to a module for which `wanted` is true, or None."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(GRAPH.get(path[-1], ())):
            if nxt in seen:
                continue
            if wanted(nxt):
                return path + [nxt]
            seen.add(nxt)
            if nxt in GRAPH:
                paths.append(path + [nxt])
    return None


def layer(module: str) -> int:
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _under(*packages: str):
    return lambda m: any(m == p or m.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("module", [m for m in SOURCES if m not in TOP_LEVEL])
def test_every_import_goes_down_or_stays_in_its_package(module):
    bad = [m for m in GRAPH[module] if m.startswith("dmat.") and layer(m) > layer(module)
           or m.startswith("dmat.") and layer(m) == layer(module) and LAYERS[layer(m)] != LAYERS[layer(module)]]
    assert bad == [], f"{module} imports {bad} from a layer above or beside it"


@pytest.mark.parametrize("package", ["dmat.model", "dmat.training"])
def test_model_and_training_reach_no_mlflow_evaluation_report_or_cli(package):
    for module in filter(_under(package), SOURCES):
        found = chain(module, _under("mlflow", "dmat.tracking", "dmat.evaluation", "dmat.report", "dmat.cli"))
        assert found is None, " -> ".join(found)


def test_report_reaches_no_training():
    for module in filter(_under("dmat.report"), SOURCES):
        found = chain(module, _under("dmat.training", "dmat.stages", "dmat.evaluation"))
        assert found is None, " -> ".join(found)


def test_nothing_below_the_cli_reaches_it():
    for module in SOURCES:
        found = None if _under("dmat.cli")(module) or module in TOP_LEVEL else chain(module, _under("dmat.cli"))
        assert found is None, " -> ".join(found)


def test_the_chain_finder_sees_a_chain_through_a_package():
    """The checks above are only as good as `chain`: the training loop does reach the model through its imports."""
    assert chain("dmat.training.loop", _under("dmat.model.unet")) is not None
    assert chain("dmat.report.build", _under("dmat.tracking.vocabulary")) is not None


def _too_long(limit: int, kinds) -> list[str]:
    out = []
    for module, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kinds):
                lines = node.end_lineno - node.lineno + 1
                reason = isinstance(node, ast.ClassDef) and LONG_BECAUSE in (ast.get_docstring(node) or "")
                if lines >= limit and not reason:
                    out.append(f"{module}.{node.name}: {lines} lines")
    return out


def test_no_function_is_longer_than_the_limit():
    assert _too_long(MAX_FUNCTION_LINES, (ast.FunctionDef, ast.AsyncFunctionDef)) == []


def test_no_class_is_longer_than_the_limit_without_a_reason():
    assert _too_long(MAX_CLASS_LINES, ast.ClassDef) == []


def test_no_module_is_longer_than_the_limit_without_a_reason():
    long = [m for m, p in SOURCES.items() if len(p.read_text().splitlines()) > MAX_MODULE_LINES
            and LONG_BECAUSE not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert long == []


def test_the_readme_layout_lists_every_module_once():
    """The README's layout block names each module by its path under src/dmat/, one line each."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- layout -->")[1].split("<!-- /layout -->")[0]
    listed = re.findall(r"^\s*([\w/]+\.py)\s", block, flags=re.M)
    on_disk = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    assert sorted(listed) == on_disk

"""The library's shape: no module imports one that imports it back (directly or around a
loop), no function longer than a screen, and ARCHITECTURE.md names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "visionpipe"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The visionpipe modules `path` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules} - {_module_name(path)}


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            # A package's __init__ is imported by its submodules by Python itself; only an
            # __init__ that imports one of its own submodules back would close a loop.
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    assert graph.get("visionpipe.train"), "the graph was read"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_architecture_names_every_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        name = rel.removesuffix(".py")
        assert f"`{rel}`" in text or f"`{name}`" in text, f"ARCHITECTURE.md does not name {rel}"


def _stage_table() -> dict[str, set[str]]:
    """ARCHITECTURE.md's "What each stage loads": stage -> the modules its row names."""
    text = (ROOT / "ARCHITECTURE.md").read_text().split("## What each stage loads", 1)[1]
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")]
    return {
        cells[1].strip(): set(re.findall(r"`([\w/]+)`", cells[3]))
        for cells in rows
        if cells[1].strip() not in {"stage", ""}
    }


@pytest.mark.parametrize("stage", list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_the_stage_table_lists_the_modules_dvc_yaml_declares(stage: str) -> None:
    # Every stage loads these (and the package's __init__); the table says so once, above it.
    common = {"paths", "fsutil", "logs", "warm", "config/__init__", "__init__"}
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    declared = {
        d.removeprefix("src/visionpipe/").removesuffix(".py")
        for d in deps
        if isinstance(d, str) and d.startswith("src/visionpipe/")
    }
    assert _stage_table()[stage] == declared - common, f"ARCHITECTURE.md's row for {stage}"

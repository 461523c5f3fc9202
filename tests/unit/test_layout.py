"""The import rule the README states: scripts -> engine -> models, data -> utils, and no cycle,
read from the source (every import statement, those inside functions included)."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict

from tests.conftest import ROOT

PACKAGES = ("engine", "models", "data", "utils")
MAY_IMPORT = {"engine": {"engine", "models", "data", "utils"}, "models": {"models", "utils"},
              "data": {"data", "utils"}, "utils": {"utils"}}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_packages_import_one_way_without_cycles():
    graph = _import_graph()
    assert sum(len(t) for t in graph.values()) > 100  # the parse found the imports at all
    wrong = [f"{m} imports {t}" for m, ts in graph.items() for t in ts
             if t.split(".")[0] not in MAY_IMPORT[m.split(".")[0]]]
    assert not wrong
    assert not _cycles(graph)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not _cycles({"a": {"b"}, "b": {"c"}})


def test_gradpath_command_imports_its_analysis_once():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "models.gradpath", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("models.gradpath.analysis") == 1
    assert "usage" in r.stdout

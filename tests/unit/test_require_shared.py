"""Tests that check against ../shared skip without it, but under GRADPATH_REQUIRE_SHARED=1 (which
.ci/run sets where ../shared exists) they fail: shared material that moved cannot pass unseen."""
from __future__ import annotations

import ast
import os
import subprocess
import textwrap
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT

PROBE = '''
from conftest import SHARED_DATA, require_shared


def test_uses_the_shared_data_fixture(shared_data):
    assert (shared_data / "README.md").is_file()


def test_uses_the_official_fixture(official):
    assert (official / "README.md").is_file()


def test_calls_require_shared():
    assert require_shared(SHARED_DATA / "dev", "COCO dev images").is_dir()
'''


def run_probe(tmp_path: Path, shared_data: Path, require: str | None) -> dict[str, tuple[str, str]]:
    """pytest on PROBE with tests/conftest.py as a plugin -> {test: (outcome, message)}."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "GRADPATH_REQUIRE_SHARED"}
    env.update(GRADPATH_SHARED_DATA=str(shared_data), PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    if require is not None:
        env["GRADPATH_REQUIRE_SHARED"] = require
    xml = tmp_path / f"probe-{require}.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "test_probe.py", "-p", "conftest", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        found = [(c.tag, c.get("message", "")) for c in case if c.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name")] = found[0] if found else ("passed", "")
    assert r.returncode == (1 if any(o in ("failure", "error") for o, _ in outcomes.values()) else 0), r.stdout
    return outcomes


@pytest.mark.parametrize("require", [None, "0"])
def test_missing_shared_material_skips(tmp_path, require):
    missing = tmp_path / "nowhere" / "data"
    outcomes = run_probe(tmp_path, missing, require)
    assert outcomes == {
        "test_uses_the_shared_data_fixture": ("skipped", f"real COCO samples not found at {missing / 'README.md'}"),
        "test_uses_the_official_fixture": ("skipped", f"official checkpoints not found at "
                                                      f"{missing.parent / 'official' / 'README.md'}"),
        "test_calls_require_shared": ("skipped", f"COCO dev images not found at {missing / 'dev'}")}


def test_require_shared_turns_each_skip_into_a_failure(tmp_path):
    missing = tmp_path / "nowhere" / "data"
    outcomes = run_probe(tmp_path, missing, "1")
    # a fixture that fails is an error in setup; a call in the test body fails the test
    assert outcomes == {
        "test_uses_the_shared_data_fixture": ("error", f"failed on setup with \"Failed: GRADPATH_REQUIRE_SHARED=1: "
                                                       f"real COCO samples not found at {missing / 'README.md'}\""),
        "test_uses_the_official_fixture": ("error", f"failed on setup with \"Failed: GRADPATH_REQUIRE_SHARED=1: "
                                                    f"official checkpoints not found at "
                                                    f"{missing.parent / 'official' / 'README.md'}\""),
        "test_calls_require_shared": ("failure", f"Failed: GRADPATH_REQUIRE_SHARED=1: COCO dev images not found at "
                                                 f"{missing / 'dev'}")}


def test_require_shared_passes_where_the_material_is(tmp_path):
    shared = tmp_path / "shared"
    for folder in (shared / "data" / "dev", shared / "official"):
        folder.mkdir(parents=True)
    (shared / "data" / "README.md").write_text("samples\n")
    (shared / "official" / "README.md").write_text("checkpoints\n")
    assert set(run_probe(tmp_path, shared / "data", "1").values()) == {("passed", "")}


def test_ci_sets_require_shared_where_shared_exists(tmp_path):
    """.ci/run's own line, run in a copy of the repository's layout with and without ../shared."""
    line = next(s for s in (ROOT / ".ci/run").read_text().splitlines() if "GRADPATH_REQUIRE_SHARED" in s)
    repo = tmp_path / "repo"
    repo.mkdir()
    script = f"cd {repo}; {line}; echo \"${{GRADPATH_REQUIRE_SHARED:-unset}}\""
    env = {k: v for k, v in os.environ.items() if k != "GRADPATH_REQUIRE_SHARED"}
    without = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    (tmp_path / "shared").mkdir()
    with_shared = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert (without.stdout, with_shared.stdout) == ("unset\n", "1\n")


def _own_shared_paths(tree: ast.AST) -> list[int]:
    """Lines that build a path to the shared folder without conftest: "shared" joined with `/`,
    given to Path() or os.path.join, a literal ../shared, or a step out of the repository (ROOT.parent)."""
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}

    def names_shared(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and "shared" in node.value

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (names_shared(node.left) or
                                                                            names_shared(node.right)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("Path", "pathlib.Path", "os.path.join") and \
                any(names_shared(a) for a in node.args):
            lines.append(node.lineno)
        elif names_shared(node) and id(node) not in docstrings and ("../shared" in node.value or
                                                                   node.value.startswith("/") and "/shared" in node.value):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in ("parent", "parents") and \
                isinstance(node.value, ast.Name) and node.value.id == "ROOT":
            lines.append(node.lineno)
    return sorted(set(lines))


def test_every_test_reaches_shared_through_conftest():
    """No test file builds a path to the shared folder itself: one of its own would ignore
    GRADPATH_SHARED_DATA and skip instead of failing under GRADPATH_REQUIRE_SHARED."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name != "conftest.py" and path != Path(__file__):  # this file builds stand-ins in tmp_path
            source = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}:{i}: {source.splitlines()[i - 1].strip()}"
                          for i in _own_shared_paths(ast.parse(source))]
    assert not offenders, "\n".join(offenders)


def test_the_path_check_sees_a_path_of_its_own():
    source = textwrap.dedent('''
        """Docstrings may say ../shared/data."""
        from pathlib import Path
        from conftest import ROOT
        A = ROOT.parent / "shared" / "data"
        B = Path("/work/shared/official")
        C = "../shared/data/dev"
        D = request.getfixturevalue("shared_data") / "dev"
        E = pytest.mark.parametrize("ann_name", ["mini", "shared"])
    ''')
    assert _own_shared_paths(ast.parse(source)) == [5, 6, 7]

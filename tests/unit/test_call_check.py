"""The CPU run checks the calls of the GPU-only tests: each call a `cuda`-marked test module makes
into project code must fit the callee's signature (tests/call_check.py), so that a signature that
changed fails here instead of on the first GPU."""
from __future__ import annotations

import ast
import textwrap

import pytest

import conftest
from call_check import check_module, cuda_marked, position
from cli_flags import check_cli_flags
from conftest import ROOT

CUDA_MODULES = sorted(p for p in (ROOT / "tests").rglob("test_*.py") if cuda_marked(p))


def test_the_cuda_tests_are_found():
    assert ROOT / "tests/cuda/test_cuda.py" in CUDA_MODULES


@pytest.mark.parametrize("path", CUDA_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cuda_tests_call_project_code_as_it_is_defined(path):
    report = check_module(path)
    flags, _ = check_cli_flags(path)
    assert not report.problems + flags, "\n".join(map(str, report.problems + flags))
    assert report.checked


def test_test_cuda_py_calls_on_the_trainer_and_its_command_lines_are_checked():
    """make_trainer's annotation tells the check what the training tests hold: a Trainer; the
    train.py, val.py, detect.py and export.py runs are checked against their parsers."""
    report = check_module(ROOT / "tests/cuda/test_cuda.py")
    assert any(".Trainer." in c.callee for c in report.checked), report.checked
    assert check_cli_flags(ROOT / "tests/cuda/test_cuda.py")[1] >= 50


WRONG = '''
import pytest

from engine.train.trainer import Trainer
from utils import geometry
from utils.geometry import box_iou

pytestmark = pytest.mark.cuda


def test_stale_calls(trainer: Trainer, boxes):
    trainer.train_step(boxes, 0, 1, 2, 3)
    box_iou(boxes)
    box_iou(boxes, boxes, eps=1e-9)
    geometry.no_such_function(boxes)
    trainer.no_such_method()
    return trainer.skiped_steps


def test_fitting_calls(trainer: Trainer, boxes):
    box_iou(boxes, boxes)
    geometry.bbox_iou(boxes, boxes, ciou=True)
    return box_iou(*boxes)


def helper(images, size: int = 640):
    return images


def test_local_helpers_too():
    helper()
    helper(1, sizes=2)
    from utils.geometry import no_such_name
'''


def test_a_wrong_call_fails_the_check(tmp_path):
    module = tmp_path / "test_wrong.py"
    module.write_text(WRONG)
    report = check_module(module, [conftest])
    found = {(p.line, p.source): p.message for p in report.problems}
    line = {text.strip(): i for i, text in enumerate(WRONG.splitlines(), 1)}
    wrong = {"trainer.train_step(boxes, 0, 1, 2, 3)": "too many positional arguments",
             "box_iou(boxes)": "missing a required argument: 'b'",
             "box_iou(boxes, boxes, eps=1e-9)": "unexpected keyword argument 'eps'",
             "geometry.no_such_function": "utils.geometry has no attribute 'no_such_function'",
             "trainer.no_such_method": "Trainer has no attribute 'no_such_method'",
             "trainer.skiped_steps": "Trainer has no attribute 'skiped_steps'",
             "helper()": "missing a required argument: 'images'",
             "helper(1, sizes=2)": "unexpected keyword argument 'sizes'",
             "from utils.geometry import no_such_name": "cannot import name 'no_such_name'"}
    for source, message in wrong.items():
        statement = next(k for k in line if k.startswith(source) or k.startswith(f"return {source}"))
        assert message in found.get((line[statement], source), ""), (source, report.problems)
    assert len(report.problems) == len(wrong), "\n".join(map(str, report.problems))
    assert {c.callee for c in report.checked} >= {"utils.geometry.box_iou", "utils.geometry.bbox_iou"}


def test_each_checked_call_of_the_cuda_tests_fails_once_it_no_longer_fits(tmp_path):
    """Every call the check binds in test_cuda.py, given a keyword its callee lacks, is reported:
    the check sees each of them (not only the ones a hand-written example names)."""
    path = ROOT / "tests/cuda/test_cuda.py"
    report = check_module(path)
    targets = {c.position for c in report.checked if not c.any_keyword}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and position(node) in targets:
            node.keywords.append(ast.keyword("not_a_parameter", ast.Constant(0)))
    mutated = tmp_path / "test_cuda_mutated.py"
    mutated.write_text(ast.unparse(tree))
    broken = check_module(mutated, [conftest])
    assert len(targets) >= 15 and len(broken.problems) == len(targets), "\n".join(map(str, broken.problems))
    assert all("'not_a_parameter'" in p.message for p in broken.problems)


def test_a_project_fixture_without_a_return_annotation_is_reported(tmp_path):
    module = tmp_path / "test_fixture.py"
    module.write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def engine():
            return object()

        @pytest.mark.cuda
        def test_uses_it(engine):
            engine.step(1)
    '''))
    problems = check_module(module, [conftest]).problems
    assert [(p.line, p.message) for p in problems] == [
        (10, "fixture 'engine' has no return annotation: the calls made on what it returns cannot be checked")]


WRONG_FLAGS = '''
import subprocess
import sys

from conftest import ROOT


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)])


def test_command_lines(tmp_path):
    run("train.py", "--epochs", 1, "--img-size", 96, "--no-such-flag")
    common = ["--weights", "w.pt", "--bogus"]
    run("val.py", *common, "--half", "--task=speed")
    subprocess.run([sys.executable, str(ROOT / "detect.py"), "--source", "x.jpg", "--conf", "0.5"])
    run("torch.distributed.run", "--nproc_per_node", 1, ROOT / "train.py", "--sync-bn", "--epochs", 1)
'''


def test_a_flag_a_script_lacks_fails_the_check(tmp_path):
    module = tmp_path / "test_flags.py"
    module.write_text(WRONG_FLAGS)
    problems, checked = check_cli_flags(module)
    # an abbreviation is refused too: argparse takes --conf for --conf-thres only while nothing else starts so
    assert [(p.line, p.message) for p in problems] == [(13, "train.py has no option --no-such-flag"),
                                                       (14, "val.py has no option --bogus"),
                                                       (16, "detect.py has no option --conf")]
    assert checked == 11  # torchrun's own flags, before the script, are not train.py's

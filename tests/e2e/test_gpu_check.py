"""benchmarks/gpu_check.py: its report, and the whole check on the CPU (--quick), so that the
command a GPU session runs has run here first."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.harness.gpu_check import CUDA_TESTS, add_test_rows, run_process_group, run_tests
from benchmarks.harness.gpu_report import Report
from benchmarks.harness.pytest_results import read_results


def test_report_rows_table_json_and_failed_measurements(tmp_path):
    report = Report(tmp_path, budget_s=60, meta={"device": "cpu"})
    report.add("speed and memory", "train x", "batch 2", "1.5 img/s", "measured", img_per_s=1.5)
    report.measure("speed and memory", "broken", "", lambda: 1 / 0)
    report.measure("speed and memory", "oom", "", lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    report.measure("speed and memory", "ok", "", lambda: ("fine", "pass", {}))
    with pytest.raises(ValueError, match="row status 'maybe'"):
        report.add("s", "c", "", "", "maybe")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["status"] for r in saved["rows"]] == ["measured", "FAIL", "FAIL", "pass"]
    assert saved["rows"][1]["result"] == "ZeroDivisionError: division by zero"
    assert saved["rows"][2]["result"] == "out of memory" and saved["rows"][0]["values"] == {"img_per_s": 1.5}
    assert saved["meta"]["counts"] == {"pass": 1, "FAIL": 2, "measured": 1, "skipped": 0}
    table = report.table().splitlines()
    assert table[0] == "| section | check | setting | result | status |" and len(table) == 2 + 4
    assert table[2] == "| speed and memory | train x | batch 2 | 1.5 img/s | measured |"


def test_a_spent_budget_skips_the_rest_and_says_so(tmp_path):
    report = Report(None, budget_s=0, meta={})
    row = report.measure("speed and memory", "train", "", lambda: pytest.fail("must not run"))
    assert row.status == "skipped" and row.result == "skipped: time budget (0 s) spent" and not row.values


TICK = "while :; do echo tick >> {marker}; sleep 0.1; done"  # a grandchild that shows it is alive


def assert_stopped(marker) -> None:
    ticks = marker.read_text().count("tick")
    time.sleep(0.5)
    assert ticks > 0 and marker.read_text().count("tick") == ticks  # it ran, and went with the group


def test_a_timed_out_test_run_ends_its_whole_process_group(tmp_path):
    marker = tmp_path / "ticks"
    output, timed_out, code = run_process_group(["bash", "-c", f"echo started; ({TICK.format(marker=marker)}) & wait"],
                                                1.0, {})
    assert timed_out and code is None and output.strip() == "started"
    assert_stopped(marker)


PROBE = """
import subprocess
import time

import pytest


def test_passes():
    pass


@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_amp_step(kind):
    assert kind == "anchor", "no " + kind


def test_skips():
    pytest.skip("no CUDA")


@pytest.fixture
def broken():
    raise RuntimeError("setup broke")


def test_failure_setup(broken):
    pass


def test_hangs(tmp_path):
    subprocess.Popen(["bash", "-c", "TICK"])  # like a training run the test started
    time.sleep(600)


def test_never_reached():
    pass
"""


def test_outcomes_come_from_the_plugin_and_a_time_out_keeps_the_finished_ones(tmp_path):
    marker = tmp_path / "ticks"
    (tmp_path / "test_probe.py").write_text(PROBE.replace("TICK", TICK.format(marker=marker)))
    t0 = time.perf_counter()
    run = run_tests([str(tmp_path / "test_probe.py"), "-p", "no:cacheprovider", "-v"], tmp_path / "r.jsonl", 10.0,
                    dict(os.environ))
    assert run.timed_out and run.returncode is None and time.perf_counter() - t0 < 20
    probe = f"{tmp_path / 'test_probe.py'}"
    ids = [f"{probe}::{n}" for n in ("test_passes", "test_amp_step[anchor]", "test_amp_step[anchor_free]",
                                     "test_skips", "test_failure_setup", "test_hangs", "test_never_reached")]
    assert [i.rpartition("::")[2] for i in run.results.collected] == [i.rpartition("::")[2] for i in ids]
    got = [(o.name, o.status, o.message) for o in run.results.outcomes]
    assert got == [("test_passes", "pass", ""), ("test_amp_step[anchor]", "pass", ""),
                   ("test_amp_step[anchor_free]", "FAIL", "AssertionError: no anchor_free"),
                   ("test_skips", "skipped", "no CUDA"),
                   ("test_failure_setup", "FAIL", "error in setup: RuntimeError: setup broke")]
    report = Report(None, budget_s=100, meta={})
    add_test_rows(report, run, "probe.py", 10.0, "cuda_tests.log")
    rows = [(r.section, r.check, r.result, r.status) for r in report.rows]
    assert rows[0] == ("CUDA correctness", "pytest -m cuda", "timed out after 10 s after 5 of 7 tests "
                       "(log: cuda_tests.log)", "FAIL")
    assert rows[1:] == [
        ("CUDA correctness", "passes", f"ok ({run.results.outcomes[0].seconds:.1f} s)", "pass"),
        ("CUDA correctness", "amp step [anchor]", f"ok ({run.results.outcomes[1].seconds:.1f} s)", "pass"),
        ("CUDA correctness", "amp step [anchor_free]", "AssertionError: no anchor_free", "FAIL"),
        ("CUDA correctness", "skips", "skipped: no CUDA", "skipped"),
        ("failure paths", "setup", "error in setup: RuntimeError: setup broke", "FAIL"),
        ("CUDA correctness", "hangs", "skipped: not run (the tests timed out)", "skipped"),
        ("CUDA correctness", "never reached", "skipped: not run (the tests timed out)", "skipped")]
    assert [r.setting for r in report.rows[1:]] == [o.nodeid for o in run.results.outcomes] + \
        list(run.results.collected[5:])
    assert "test_probe.py::test_passes PASSED" in run.output  # the log keeps pytest's own -v lines
    assert_stopped(marker)


def test_a_run_that_ends_on_its_own_has_no_summary_row(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_one():\n    pass\n\n\ndef test_two():\n    assert 0, 'two'\n")
    run = run_tests([str(tmp_path / "test_ok.py"), "-p", "no:cacheprovider"], tmp_path / "r.jsonl", 60.0,
                    dict(os.environ))
    assert (run.timed_out, run.returncode) == (False, 1)
    report = Report(None, budget_s=100, meta={})
    add_test_rows(report, run, "test_ok.py", 60.0, "log")
    assert [(r.check, r.status) for r in report.rows] == [("one", "pass"), ("two", "FAIL")]
    assert report.rows[1].result == "AssertionError: two\nassert 0".splitlines()[0]


@pytest.mark.slow
def test_gpu_check_quick_runs_on_the_cpu_and_invents_nothing(root, tmp_path):
    # a budget no run reaches: on a busy box the quick check takes longer than its default 150 s, and
    # this test is about which rows it makes (the budget's own skipping is tested above)
    # pytest's own collection of the cuda tests, the rows' oracle, runs beside the check
    collecting = subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                                   "no:cacheprovider", CUDA_TESTS], cwd=root, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
    r = subprocess.run([sys.executable, str(root / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick",
                        "--budget", "900", "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    collected, _ = collecting.communicate(timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = saved["rows"]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(table) == len(rows) and all(f"| {row['result']} | {row['status']} |" in line
                                           for row, line in zip(rows, table))
    by_section = {s: [row for row in rows if row["section"] == s] for s in
                  ("environment", "CUDA correctness", "speed and memory", "failure paths")}
    assert sum(map(len, by_section.values())) == len(rows)
    assert {k: sum(row["status"] == k for row in rows) for k in saved["meta"]["counts"]} == saved["meta"]["counts"]
    assert [row["result"] for row in by_section["environment"] if row["check"] == "device"] == \
        [f"{torch.get_num_threads()} torch threads"]
    # every cuda-marked test is a row, its setting the node id pytest itself collects; without CUDA
    # each says so, as do the GPU-only measurements
    ids = [line for line in collected.splitlines() if line.startswith(f"{CUDA_TESTS}::")]
    tests = by_section["CUDA correctness"] + by_section["failure paths"]
    assert len(ids) >= 10 and sorted(row["setting"] for row in tests) == sorted(ids), collected[-2000:]
    assert [row["setting"] for row in by_section["failure paths"]] == [i for i in ids if "::test_failure_" in i]
    results = read_results(tmp_path / "work/cuda_tests.jsonl")
    assert list(results.collected) == ids and [o.nodeid for o in results.outcomes] == ids
    gpu_only = tests + [row for row in rows if row["check"] in ("TF32, bf16", "AMP bf16 vs fp16, train",
                                                                "TensorRT engine")]
    assert any(row["check"] == "TensorRT engine" for row in gpu_only)
    assert all(row["status"] == "skipped" and row["result"] == "skipped: no CUDA" for row in gpu_only)
    assert all(not row["values"] for row in rows if row["status"] == "skipped")
    log = (tmp_path / "cuda_tests.log").read_text()
    assert all(f"{i} SKIPPED" in log for i in ids)  # pytest's own -v output is the log
    # what the CPU can answer it measured: training, loader, inference, validation, channels_last
    measured = {row["check"]: row for row in by_section["speed and memory"] if row["status"] == "measured"}
    assert set(measured) >= {"train gp-n-seg", "loader (mosaic, coco-mini)", "inference gp-n-seg",
                             "validation (val.py path)", "channels_last, train", "channels_last, inference"}
    assert all(v > 0 for row in measured.values() for v in row["values"].values())
    assert set(measured["train gp-n-seg"]["values"]) == {"img_per_s", "peak_gib"}
    assert set(measured["inference gp-n-seg"]["values"]) == {"ms_per_image"}
    compiled = [row for row in rows if row["check"].startswith("torch.compile")]
    assert len(compiled) == 2 and all(row["status"] == "pass" for row in compiled)
    assert saved["meta"]["counts"]["FAIL"] == 0

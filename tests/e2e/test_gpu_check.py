"""benchmarks/gpu_check.py: its report, and the whole check on the CPU (--quick), so that the
command a GPU session runs has run here first."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import benchmarks.harness.gpu_check
from benchmarks.harness.gpu_check import QUICK, Context, cuda_tests, run_process_group
from benchmarks.harness.gpu_report import Report


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


def test_a_timed_out_test_run_ends_its_whole_process_group(tmp_path):
    marker = tmp_path / "late"
    output, timed_out = run_process_group(["bash", "-c", f"echo started; (sleep 3; touch {marker}) & wait"], 1.0, {})
    assert timed_out and output.strip() == "started"
    import time

    time.sleep(3.5)
    assert not marker.exists()  # the grandchild went with the group


def test_tests_that_finished_before_a_time_out_keep_their_rows(tmp_path, monkeypatch):
    output = ("tests/cuda/test_cuda.py::test_amp_train_step_matches_the_fp32_cpu_step[anchor-fp16] PASSED [  8%]\n"
              "tests/cuda/test_cuda.py::test_failure_non_finite_amp_loss_skips_the_step_as_on_cpu FAILED [ 16%]\n")
    monkeypatch.setattr(engine.gpu_check, "run_process_group", lambda *a, **k: (output, True))
    report = Report(None, budget_s=100, meta={})
    cuda_tests(report, Context(torch.device("cpu"), QUICK, tmp_path, tmp_path))
    rows = [(r.section, r.check, r.status) for r in report.rows]
    assert rows[0][2] == "FAIL" and "timed out after" in report.rows[0].result and "after 2 tests" in report.rows[0].result
    assert rows[1:] == [("CUDA correctness", "amp train step matches the fp32 cpu step [anchor-fp16]", "pass"),
                        ("failure paths", "non finite amp loss skips the step as on cpu", "FAIL")]
    assert (tmp_path / "cuda_tests.log").read_text() == output


@pytest.mark.slow
def test_gpu_check_quick_runs_on_the_cpu_and_invents_nothing(root, tmp_path):
    r = subprocess.run([sys.executable, str(root / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick",
                        "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = saved["rows"]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(table) == len(rows) and all(f"| {row['result']} | {row['status']} |" in line
                                           for row, line in zip(rows, table))
    by_section = {s: [row for row in rows if row["section"] == s] for s in
                  ("environment", "CUDA correctness", "speed and memory", "failure paths")}
    # every cuda-marked test is a row; without CUDA each says so, as do the GPU-only measurements
    assert len(by_section["CUDA correctness"]) + len(by_section["failure paths"]) >= 10
    gpu_only = by_section["CUDA correctness"] + by_section["failure paths"] + \
        [row for row in rows if row["check"] in ("TF32, bf16", "AMP bf16 vs fp16, train")]
    assert all(row["status"] == "skipped" and row["result"] == "skipped: no CUDA" for row in gpu_only)
    assert all(not row["values"] for row in rows if row["status"] == "skipped")
    # what the CPU can answer it measured: training, loader, inference, validation, channels_last
    measured = [row for row in by_section["speed and memory"] if row["status"] == "measured"]
    assert {row["check"] for row in measured} >= {"train gp-n-seg", "loader (mosaic, coco-mini)",
                                                 "inference gp-n-seg", "validation (val.py path)",
                                                 "channels_last, train", "channels_last, inference"}
    assert all(v > 0 for row in measured for v in row["values"].values())
    compiled = [row for row in rows if row["check"].startswith("torch.compile")]
    assert len(compiled) == 2 and all(row["status"] == "pass" for row in compiled)
    assert saved["meta"]["counts"]["FAIL"] == 0 and (tmp_path / "work/cuda_tests.xml").is_file()
    assert "skipped" in (tmp_path / "cuda_tests.log").read_text()

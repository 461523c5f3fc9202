"""Every CLI's flags with out-of-range values, as users mistype them: exit code 2, one line on
stderr naming the flag (or the file and key), no traceback, and no run folder. The checks that
need a file or the model run the real scripts; the image size is rounded up to the model's
stride with a warning, the same in train.py, val.py, detect.py and export.py."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFICIAL, ROOT, require_shared, run_scripts
from test_cli import parser

SIZE = "argument --img-size/--img/--imgsz: must be at least 1, got 0"
DEVICE = "argument --device: expected cpu, a CUDA index such as 0, or a list such as 0,1,2,3, got 'gpu'"
BATCH = "argument --batch-size/--batch: must be at least 1, got 0"
CONF = "argument --conf-thres: must be in [0, 1], got 2"
IOU = "argument --iou-thres: must be in [0, 1], got -0.1"
SHARED = [(["--img-size", "0"], SIZE), (["--device", "gpu"], DEVICE),
          (["--img", "640", "480"], "argument --img: 640 480: one size only (images keep their aspect ratio"),
          (["--img", "640", "640", "640"], "argument --img: one or two sizes, got 640 640 640")]
INFER = [(["--batch-size", "0"], BATCH), (["--conf-thres", "2"], CONF), (["--iou-thres", "-0.1"], IOU),
         (["--conf-thres", "nan"], "argument --conf-thres: must be in [0, 1], got nan"),
         (["--max-det", "0"], "argument --max-det: must be at least 1, got 0"),
         (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
         (["--augment"], "--augment: test-time augmentation is not available here")]
CASES = {
    "train.py": [
        (["--batch-size", "0"], BATCH),
        (["--batch", "-1"], "argument --batch-size/--batch: -1 (AutoBatch) is not available here: give a number"),
        (["--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--img-size", "0"], SIZE), (["--img", "640", "640", "640"], "argument --img: one or two sizes"),
        (["--device", "gpu"], DEVICE),
        (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
        (["--save-period", "-3"], "argument --save-period/--save_period: must be -1 (off) or a positive number"),
        (["--save_period", "0"], "argument --save-period/--save_period: must be -1 (off) or a positive number"),
        (["--patience", "-1"], "argument --patience: must be at least 0, got -1"),
        (["--close-mosaic", "-2"], "argument --close-mosaic: must be at least 0, got -2"),
        (["--log-grads", "-1"], "argument --log-grads: must be at least 0, got -1"),
        (["--label-smoothing", "1"], "argument --label-smoothing: must be in [0, 1), got 1"),
        (["--label-smoothing", "-0.1"], "argument --label-smoothing: must be in [0, 1), got -0.1"),
        (["--freeze", "-1"], "argument --freeze: layer numbers are at least 0, got -1"),
        (["--freeze", "backbone", "3"], "argument --freeze: 'backbone' goes alone, got backbone 3"),
        (["--freeze", "head"], "argument --freeze: expected 'backbone' or whole numbers, got 'head'"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["--optimizer", "Lion"], "argument --optimizer: invalid choice: 'Lion'"),
        (["--cache", "cloud"], "argument --cache: invalid choice: 'cloud'"),
        (["--evolve"], "--evolve: hyperparameter evolution is not available here"),
        (["--resume_evolve", "x"], "--resume_evolve x: hyperparameter evolution is not available here"),
    ],
    "val.py": SHARED + INFER + [(["--task", "study"], "argument --task: invalid choice: 'study'"),
                                (["--save-hybrid"], "--save-hybrid: not available here")],
    "detect.py": SHARED + INFER[:5] + [
        (["--classes", "-1"], "argument --classes: must be at least 0, got -1"),
        (["--line-thickness", "0"], "argument --line-thickness: must be at least 1, got 0"),
        (["--vid-stride", "2"], "--vid-stride 2: every frame is processed here (only 1 is accepted)"),
        (["--save-format", "1"], "--save-format 1: only 0 (YOLO txt) is available here"),
        (["--save-csv"], "--save-csv: not available here")],
    "export.py": SHARED + [(["--batch-size", "0"], BATCH), (["--conf-thres", "2"], CONF), (["--iou-thres", "-0.1"], IOU)],
}


def _cases():
    for script, cases in CASES.items():
        for argv, message in cases:
            yield pytest.param(script, argv, message, id=f"{script} {' '.join(argv)}")


@pytest.mark.parametrize("script, argv, message", list(_cases()))
def test_an_out_of_range_flag_is_one_line_and_exit_2(script, argv, message, capsys, monkeypatch):
    """Through the script's main(), wherever it checks (its parser, or after parsing): nothing
    else may have run first (w.pt does not exist: reaching it would be another error)."""
    main = importlib.import_module(script.removesuffix(".py")).main
    monkeypatch.setattr(sys, "argv", [script])  # the program name argparse prints, as when run
    try:
        code = main(["--weights", "w.pt", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{script}: error: ") and message in err, err


def test_every_script_walked_and_export_takes_its_shared_flags():
    covered = {script for script, *_ in (p.values for p in _cases())}
    assert covered == set(CASES)
    flags = {s for a in parser("export.py")._actions for s in a.option_strings}
    assert {"--img-size", "--device", "--batch-size", "--conf-thres", "--iou-thres"} <= flags


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_what_needs_a_file_or_the_model_is_one_line_before_any_run_folder(tmp_path):
    (tmp_path / "some.yaml").write_text("lr0: 0.01\n")
    (tmp_path / "fast.yaml").write_text("lr0: fast\n")
    (tmp_path / "mosaic.yaml").write_text("mosaic: 1.5\n")
    runs = ["--project", str(tmp_path / "runs")]
    not_pt = "some.yaml: not a PyTorch checkpoint"
    not_model = "some.yaml: unknown model format '.yaml' (expected .pt, .onnx, *_openvino_model/"  # val/detect: any format
    cases = [
        ("train.py", ["--hyp", "fast.yaml"], "fast.yaml: hyperparameter 'lr0' must be a number, got 'fast'"),
        ("train.py", ["--hyp", "mosaic.yaml"], "mosaic.yaml: hyperparameter 'mosaic' must be in [0.0, 1.0], got 1.5"),
        ("train.py", ["--patience", "3", "--noval"], "--patience 3 with --noval: patience counts epochs"),
        ("train.py", ["--patience", "3", "--notest"], "--patience 3 with --notest: patience counts epochs"),
        ("train.py", ["--freeze", "99"], "--freeze 99: the model has 27 layers"),
        ("train.py", ["--weights", "some.yaml"], not_pt),
        ("val.py", ["--weights", "some.yaml"], not_model),
        ("detect.py", ["--weights", "some.yaml"], not_model),
        ("export.py", ["--weights", "some.yaml"], not_pt),
    ]
    done = run_scripts([(script, *argv, "--device", "cpu", *(runs if script != "export.py" else []))
                        for script, argv, _ in cases], cwd=tmp_path)
    for (script, argv, message), r in zip(cases, done):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{script}: error: "), (argv, r.stderr)
        assert message in lines[0], (argv, lines[0])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_image_size_off_the_stride_is_rounded_up_the_same_everywhere(tmp_path, shared_data, make_trainer):
    weights = str(require_shared(OFFICIAL / "yolov5n.pt", "official checkpoints"))
    warning = "--img-size 33 is not a multiple of the model's stride 32: using 64"
    image = shared_data / "images/bus.jpg"
    calls = [("detect.py", "--weights", weights, "--img-size", "33", "--source", str(image), "--device", "cpu",
              "--project", str(tmp_path / "d")),
             ("val.py", "--weights", weights, "--data", str(shared_data / "dev/coco8-seg/coco8-seg.yaml"),
              "--img-size", "33", "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "v")),
             ("export.py", "--weights", weights, "--img-size", "33", "--out", str(tmp_path / "m.onnx"))]
    for call, r in zip(calls, run_scripts(calls, cwd=tmp_path)):
        assert r.returncode == 0 and warning in r.stderr, (call[0], r.stderr[-2000:])
    trainer = make_trainer("anchor", img_size=33)
    assert trainer.config.options.img_size == 64

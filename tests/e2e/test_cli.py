"""The root CLIs take the YOLOv7-compatible flags of the architecture document, read from each
script's own argparse parser (build_parser): option strings, kinds, types, choices and defaults,
and what a command line parses to."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ("train.py", "val.py", "detect.py", "export.py")


def parser(script: str) -> argparse.ArgumentParser:
    p = importlib.import_module(script.removesuffix(".py")).build_parser()
    p.prog = script  # as when run: the usage line names the script
    return p


def options(script: str) -> dict[str, argparse.Action]:
    return {s: a for a in parser(script)._actions for s in a.option_strings}


def is_switch(action: argparse.Action) -> bool:
    """--flag alone sets True (store_true)."""
    return action.nargs == 0 and action.const is True and action.default is False


def takes_value(action: argparse.Action, type_=None) -> bool:
    """--flag VALUE, converted to type_ (None: kept a string); a checking type converts in-range values."""
    if not (isinstance(action, argparse._StoreAction) and action.nargs is None):
        return False
    sample = {int: "3", float: "0.5", None: "0"}[type_]
    value = action.type(sample) if action.type else sample
    return type(value) is (type_ or str)


def one_or_two_sizes(action: argparse.Action) -> bool:
    """--img-size 640 or --img-size 640 640 (YOLOv7's train and test sizes; YOLOv5's h w)."""
    return action.nargs == "+" and action.type("640") == 640 and action.dest == "img_size"


# flags -> what each is: a value of a type, a switch, or an exact check of the action
SPEC = {
    "train.py": {
        **dict.fromkeys("--weights --cfg --data --hyp --device --project --name".split(), str),
        **dict.fromkeys("--epochs --batch-size --batch --workers --save-period --save_period --seed --patience "
                        "--local_rank --local-rank".split(), int),
        "--label-smoothing": float,
        "--img-size": one_or_two_sizes,
        **dict.fromkeys("--exist-ok --rect --multi-scale --single-cls --sync-bn --notest --noplots".split(), "switch"),
        "--adam": lambda a: a.nargs == 0 and a.dest == "optimizer" and a.const == "Adam",
        "--cos-lr": lambda a: a.nargs == 0 and a.dest == "lr_schedule" and a.const == "cosine",
        "--cache-images": lambda a: a.nargs == 0 and a.dest == "cache" and a.const == "ram",
        "--freeze": lambda a: a.nargs == "+" and a.default == (),
        "--resume": lambda a: a.nargs == "?" and a.default == "",  # alone: the newest run; or a last.pt
        "--cache": lambda a: a.nargs == "?" and a.const == "ram" and set(a.choices) == {"ram", "disk"},
        "--optimizer": lambda a: set(a.choices) == {"SGD", "Adam", "AdamW"} and a.default == "SGD",
        "--linear-lr": lambda a: a.nargs == 0 and a.dest == "lr_schedule" and a.const == "linear",
        "--lr-schedule": lambda a: "linear" in a.choices and "cosine" in a.choices,
    },
    "val.py": {
        **dict.fromkeys("--weights --data --ann-json --pred-json".split(), str),
        **dict.fromkeys("--batch-size --batch --max-det".split(), int),
        "--img-size": one_or_two_sizes,
        **dict.fromkeys("--conf-thres --iou-thres".split(), float),
        **dict.fromkeys("--save-json --save-txt --verbose".split(), "switch"),
        "--task": lambda a: set(a.choices) == {"val", "test", "speed", "track"} and a.default == "val",
        **dict.fromkeys("--gt --tracks".split(), str),
    },
    "detect.py": {
        **dict.fromkeys("--weights --source --project --name".split(), str),
        **dict.fromkeys("--max-det --batch-size".split(), int),
        "--img-size": one_or_two_sizes,
        **dict.fromkeys("--conf-thres --iou-thres".split(), float),
        **dict.fromkeys("--save-txt --save-json --view-img --nosave".split(), "switch"),
        "--classes": lambda a: a.nargs == "+" and a.type("2") == 2 and a.default is None,
        "--track": "switch",
        "--tracker": lambda a: "bytetrack" in a.choices and a.default is None,  # None: not given (bytetrack)
    },
    "export.py": {
        "--weights": lambda a: a.required and a.type is None,
        "--format": lambda a: "onnx" in a.choices and a.default == "onnx",
        "--img-size": one_or_two_sizes,
        "--dynamic": "switch",
    },
}
# YOLOv7's defaults where a result depends on them (its test.py and detect.py)
DEFAULTS = {
    "val.py": {"batch_size": 32, "conf_thres": 0.001, "iou_thres": 0.65, "img_size": None, "task": "val"},
    "detect.py": {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 300, "img_size": None, "project": "runs/detect",
                  "name": "exp", "nosave": False},
    "export.py": {"format": "onnx", "img_size": None, "dynamic": False},
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_documented_flag_is_an_option_of_its_kind(script):
    found = options(script)
    wrong = []
    for flag, kind in SPEC[script].items():
        action = found.get(flag)
        if action is None:
            wrong.append(f"{flag}: no such option")
        elif kind == "switch" and not is_switch(action):
            wrong.append(f"{flag}: not a switch (nargs {action.nargs}, default {action.default!r})")
        elif isinstance(kind, type) and not takes_value(action, None if kind is str else kind):
            wrong.append(f"{flag}: does not take one {kind.__name__} (type {action.type}, nargs {action.nargs})")
        elif not isinstance(kind, (str, type)) and not kind(action):
            wrong.append(f"{flag}: {action}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("script", sorted(DEFAULTS))
def test_defaults(script):
    ns = parser(script).parse_args(["--weights", "w.pt"])
    assert {k: getattr(ns, k) for k in DEFAULTS[script]} == DEFAULTS[script]


@pytest.mark.parametrize("script", SCRIPTS)
def test_img_size_aliases_are_one_option(script):
    found = options(script)
    assert found["--img-size"] is found["--img"] is found["--imgsz"]
    assert parser(script).parse_args(["--weights", "w.pt", "--imgsz", "320"]).img_size == 320


def test_a_train_command_line_parses_to_its_values():
    ns = parser("train.py").parse_args(["--img", "320", "--batch-size", "8", "--cache", "--linear-lr", "--rect",
                                        "--resume", "--optimizer", "AdamW", "--device", "0,1"])
    assert (ns.img_size, ns.batch_size, ns.cache, ns.lr_schedule, ns.rect, ns.resume, ns.optimizer, ns.device) == \
        (320, 8, "ram", "linear", True, "True", "AdamW", "0,1")
    assert parser("train.py").parse_args(["--resume", "runs/train/exp/weights/last.pt"]).resume == \
        "runs/train/exp/weights/last.pt"


def test_official_train_command_lines_parse_to_their_values():
    """YOLOv7's README command (train and test sizes, --adam spelled its way) and YOLOv5's habits."""
    ns = parser("train.py").parse_args(["--workers", "8", "--device", "0", "--batch-size", "32", "--img", "640", "640",
                                        "--adam", "--cache-images", "--save_period", "5", "--local_rank", "0",
                                        "--freeze", "50", "--notest"])
    assert (ns.img_size, ns.val_img_size, ns.optimizer, ns.cache, ns.save_period, ns.freeze, ns.notest) == \
        (640, 640, "Adam", "ram", 5, (50,), True)
    ns = parser("train.py").parse_args(["--img", "320", "--batch", "8", "--cos-lr", "--label-smoothing", "0.1",
                                        "--freeze", "0", "1", "2", "--save-period", "3"])
    assert (ns.img_size, ns.val_img_size, ns.batch_size, ns.lr_schedule, ns.label_smoothing, ns.freeze,
            ns.save_period) == (320, None, 8, "cosine", 0.1, (0, 1, 2), 3)
    assert parser("train.py").parse_args(["--freeze", "backbone"]).freeze == "backbone"
    assert parser("val.py").parse_args(["--img", "640", "640", "--batch", "4"]).img_size == 640


def test_ignored_official_flags_warn_once_and_refused_ones_stop(capsys):
    ns = parser("train.py").parse_args(["--quad", "--bucket", "b", "--image-weights", "--v5-metric",
                                        "--entity", "me", "--upload_dataset", "--bbox_interval", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split()[2] for line in err] == ["--image-weights", "--quad", "--v5-metric", "--bucket", "--entity",
                                                 "--upload_dataset", "--bbox_interval"]
    assert all(line.startswith("train.py: warning: ") and "has no effect here: " in line for line in err)
    assert not any(k.startswith(("ignored_", "refused_")) for k in vars(ns))
    with pytest.raises(SystemExit) as e:
        parser("train.py").parse_args(["--evolve", "300"])
    assert e.value.code == 2 and capsys.readouterr().err == \
        "train.py: error: --evolve 300: hyperparameter evolution is not available here: run a sweep of --hyp files instead\n"
    assert parser("detect.py").parse_args(["--vid-stride", "1"]).nosave is False  # the value that changes nothing
    with pytest.raises(SystemExit):
        parser("detect.py").parse_args(["--vid-stride", "2"])
    assert capsys.readouterr().err.strip() == \
        "detect.py: error: --vid-stride 2: every frame is processed here (only 1 is accepted)"


def test_a_detect_command_line_parses_to_its_values():
    ns = parser("detect.py").parse_args(["--source", "clip.mp4", "--classes", "0", "2", "--conf-thres", "0.5",
                                         "--save-txt", "--nosave"])
    assert (ns.source, ns.classes, ns.conf_thres, ns.save_txt, ns.nosave, ns.save_json) == \
        ("clip.mp4", [0, 2], 0.5, True, True, False)


@pytest.mark.parametrize("script, argv, message", [
    ("val.py", ["--task", "train"], "argument --task: invalid choice: 'train' (choose from 'val', 'test', 'speed', 'track')"),
    ("train.py", ["--optimizer", "Lion"],
     "argument --optimizer: invalid choice: 'Lion' (choose from 'SGD', 'Adam', 'AdamW')"),
    ("detect.py", ["--max-det", "many"], "argument --max-det: invalid int value: 'many'"),
    ("export.py", [], "the following arguments are required: --weights"),
    ("val.py", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_exit_2_naming_the_flag(script, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parser(script).parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines()[-1] == f"{script}: error: {message}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_the_parsers_help(script, monkeypatch):
    """What `script --help` prints is build_parser's help: the parser the tests read is the CLI's."""
    monkeypatch.setenv("COLUMNS", "100")
    r = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == parser(script).format_help()

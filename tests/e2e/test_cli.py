"""The root CLIs list the YOLOv7-compatible flags of the architecture document."""
from __future__ import annotations

import subprocess
import sys
from conftest import ROOT
from pathlib import Path

import pytest


FLAGS = {
    "train.py": "--weights --cfg --data --hyp --epochs --batch-size --img-size --device --workers --project --name "
                "--exist-ok --resume --rect --cache --multi-scale --single-cls --optimizer --sync-bn --linear-lr --lr-schedule "
                "--save-period --seed",
    "val.py": "--weights --data --batch-size --img-size --conf-thres --iou-thres --task --save-json --save-txt "
              "--verbose --ann-json --pred-json",
    "detect.py": "--weights --source --img-size --conf-thres --iou-thres --max-det --classes --save-txt --save-json "
                 "--view-img --nosave --project --name",
    "export.py": "--weights --format --img-size --dynamic",
}


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_lists_flags(script):
    r = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    missing = [f for f in FLAGS[script].split() if f not in r.stdout]
    assert not missing, f"{script} --help lacks {missing}"

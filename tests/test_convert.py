"""The official-checkpoint converter: reads pickled whole-model files without importing or running
their code, maps tensors by order with shape checks, refuses code-running pickles."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models.convert import convert, read_official
from models.model import build_model
from utils.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg/models/gp-n-seg.yaml"


def _official_like(monkeypatch, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A whole-model pickle whose classes live under the official module names (models.yolo,
    models.common), as YOLOv7/YOLOR files do; those modules exist only while saving."""
    torch.manual_seed(0)
    ours = build_model(CFG)
    fake = copy.deepcopy(ours)
    common, yolo = types.ModuleType("models.common"), types.ModuleType("models.yolo")
    monkeypatch.setitem(sys.modules, "models.common", common)
    monkeypatch.setitem(sys.modules, "models.yolo", yolo)
    renamed = {}
    for m in fake.modules():
        cls = type(m)
        if cls.__module__.startswith("models."):
            target = yolo if m is fake else common
            name = "Model" if m is fake else cls.__name__
            if (target, name) not in renamed:
                renamed[(target, name)] = type(name, (cls,), {"__module__": target.__name__})
                setattr(target, name, renamed[(target, name)])
            m.__class__ = renamed[(target, name)]
    fake.names = [f"class{i}" for i in range(80)]
    path = tmp_path / "official.pt"
    torch.save({"model": fake.half(), "ema": None, "epoch": 299, "best_fitness": np.float64(0.5),
                "training_results": "..."}, path)
    monkeypatch.delitem(sys.modules, "models.common")
    monkeypatch.delitem(sys.modules, "models.yolo")
    return path, ours


def test_converts_without_importing_and_matches_outputs(monkeypatch, tmp_path):
    src, ours = _official_like(monkeypatch, tmp_path)
    out = convert(src, CFG, tmp_path / "ours.pt")
    assert "models.yolo" not in sys.modules and "models.common" not in sys.modules
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["names"][3] == "class3" and ckpt["config"]["category_ids"][-1] == 90
    from engine.checkpoint import model_from_checkpoint

    converted = model_from_checkpoint(ckpt).eval()
    reference = ours.half().float().eval()  # the official file stored fp16 weights
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = converted(x), reference(x)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)


def test_wrong_cfg_names_the_first_mismatch(monkeypatch, tmp_path):
    src, _ = _official_like(monkeypatch, tmp_path)
    import yaml

    cfg = yaml.safe_load(CFG.read_text())
    cfg["backbone"][0][3][0] = 16  # a narrower stem
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"does not fit our layers\.0\.conv\.weight"):
        convert(src, tmp_path / "narrow.yaml", tmp_path / "x.pt")


def test_official_isegment_head_maps_by_role(monkeypatch, tmp_path):
    """YOLOv7-seg's ISegment stores anchors in grid units, its tensors in another order (anchors,
    m, ia, im, proto) and an ImplicitM sized for the detection outputs that its forward never
    applies: the converter maps the head by role, scales the anchors and sets ImplicitM to 1."""
    torch.manual_seed(0)
    ours = build_model(CFG).eval()
    with torch.no_grad():
        for im in ours.head.im:
            im.implicit.fill_(1.0)  # what the official forward computes: no ImplicitM
    fake = copy.deepcopy(ours)
    yolo, common = types.ModuleType("models.yolo"), types.ModuleType("models.common")
    monkeypatch.setitem(sys.modules, "models.yolo", yolo)
    monkeypatch.setitem(sys.modules, "models.common", common)

    class ISegment(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.register_buffer("anchors", head.anchors / head.strides.view(-1, 1, 1))
            self.m, self.ia = head.m, head.ia
            self.im = torch.nn.ModuleList(ImplicitM(255) for _ in head.m)
            self.proto = head.proto

    class ImplicitM(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.implicit = torch.nn.Parameter(torch.rand(1, c, 1, 1))

    class Model(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.model = torch.nn.Sequential(*layers)

    for cls, mod in ((ISegment, yolo), (ImplicitM, common), (Model, yolo)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    official = Model([*fake.layers[:-1], ISegment(fake.layers[-1])])
    torch.save({"model": official, "ema": None}, tmp_path / "yolov7-seg.pt")
    monkeypatch.delitem(sys.modules, "models.yolo")
    monkeypatch.delitem(sys.modules, "models.common")

    ckpt = load_checkpoint(convert(tmp_path / "yolov7-seg.pt", CFG, tmp_path / "ours.pt"))
    from engine.checkpoint import model_from_checkpoint

    converted = model_from_checkpoint(ckpt).eval()
    assert torch.allclose(converted.head.anchors, ours.head.anchors)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = converted(x), ours(x)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused: the pickle references (os|posix)\.system"):
        read_official(tmp_path / "evil.pt")
    assert not marker.exists()
    r = subprocess.run([sys.executable, "-m", "models.convert", str(tmp_path / "evil.pt"), "--cfg", str(CFG),
                        "--out", str(tmp_path / "o.pt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refused" in r.stderr and not marker.exists()


def test_truncated_official_file(tmp_path, monkeypatch):
    src, _ = _official_like(monkeypatch, tmp_path)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        read_official(bad)


def test_paper_tables_on_bundled_data(monkeypatch, tmp_path):
    """The Table 8 script validates every checkpoint in a folder (here a converted one)."""
    src, _ = _official_like(monkeypatch, tmp_path)
    wdir = tmp_path / "weights"
    convert(src, CFG, wdir / "gp-n-seg.pt")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/paper_tables.py"), "--weights-dir", str(wdir),
                        "--data", str(ROOT / "cfg/data/coco-mini.yaml"), "--img-size", "128", "--batch-size", "8",
                        "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = [line for line in r.stdout.splitlines() if line.startswith("| gp-n-seg.pt")]
    assert row and "| gp-n-seg |" in row[0] and "12.9 (-)" in row[0]

"""Model building from cfgs: shapes, strides, size, fuse, gradients, cfg errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from models.model import build_model
from models.parser import CfgError

SMALL = ROOT / "cfg/models/gp-n-seg.yaml"
LITE = ROOT / "cfg/models/gp-n-seg-lite.yaml"


@pytest.fixture(scope="module", params=[SMALL, LITE], ids=lambda p: p.stem)
def small(request):
    torch.manual_seed(0)
    return build_model(request.param)


def test_small_model_shapes_train_and_eval(small):
    assert small.stride.tolist() == [8.0, 16.0, 32.0] and small.nc == 80 and small.nm == 32
    small.train()
    out = small(torch.rand(2, 3, 96, 128))
    assert out.kind == "anchor" and [tuple(p.shape) for p in out.preds] == [
        (2, 3, 12, 16, 117), (2, 3, 6, 8, 117), (2, 3, 3, 4, 117)]
    assert tuple(out.proto.shape) == (2, 32, 24, 32) and out.anchors.shape == (3, 3, 2)
    small.eval()
    with torch.no_grad():
        pred, proto = small(torch.rand(2, 3, 96, 128))
    assert tuple(pred.shape) == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 4 + 80 + 32)
    assert (pred[..., 4:84] >= 0).all() and (pred[..., 4:84] <= 1).all()


def test_small_model_size_within_budget(small):
    info = small.info(640)
    assert info["params"] < 5e6 and info["gflops"] < 15
    assert info["params"] == sum(p.numel() for p in small.parameters())


def test_lite_model_halves_only_the_full_resolution_stages():
    """gp-n-seg-lite is gp-n-seg with rows 0-2 (strides 2 and 4) at half width and nothing else
    changed, so its neck, head and prototypes stay those of the quick start's model."""
    small, lite = (yaml.safe_load(p.read_text()) for p in (SMALL, LITE))
    assert lite["head"] == small["head"] and lite["backbone"][3:] == small["backbone"][3:]
    assert [r[3] for r in lite["backbone"][:3]] == [[16, 3, 2], [32, 3, 2], [32, 16, 2, 1]]
    assert [r[3] for r in small["backbone"][:3]] == [[32, 3, 2], [64, 3, 2], [64, 32, 2, 1]]
    info = build_model(LITE).info(640)
    assert info["params"] == 4378826 and round(info["gflops"], 2) == 10.87  # gp-n-seg: 4414362, 12.90


def test_fuse_keeps_outputs(small):
    m = copy.deepcopy(small).eval()
    for mod in m.modules():  # non-trivial BN statistics so folding matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        fused = m.fuse()(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(ref[0], fused[0], atol=1e-4) and torch.allclose(ref[1], fused[1], atol=1e-4)


def test_gradients_reach_first_layer(small):
    small.train()
    out = small(torch.rand(1, 3, 64, 64))
    (sum(p.sum() for p in out.preds) + out.proto.sum()).backward()
    g = small.layers[0].conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    small.zero_grad()


def test_num_classes_override_and_anchor_free_head():
    cfg = yaml.safe_load(SMALL.read_text())
    m = build_model(cfg, num_classes=3)
    assert m.nc == 3 and m.head.m[0].out_channels == 3 * (5 + 3 + 32)
    cfg["head"][-1] = [[19, 22, 25], 1, "AnchorFreeHead", ["nc", 32, 64, 16]]
    af = build_model(cfg, num_classes=5).eval()
    with torch.no_grad():
        pred, proto = af(torch.rand(1, 3, 64, 64))
    assert af.head.kind == "anchor_free" and pred.shape[-1] == 4 + 5 + 32 and proto.shape[1] == 32


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["backbone"].__setitem__(2, [-1, 1, "Bogus", [64]]), r"row 2 \(backbone\): unknown block 'Bogus'"),
    (lambda c: c["backbone"].__setitem__(0, [-1, 1, "Conv", [32, 3, 2, 1, 1, 9]]), r"row 0 .*at most 5 args"),
    (lambda c: c["head"].__setitem__(4, [[-1, 40], 1, "Concat", [1]]), r"row 13 \(head\): 'from' index 40"),
    (lambda c: c["head"].__setitem__(0, [-1, 1, "SPPF"]), r"row 9 .*expected \[from, repeats, block, args\]"),
])
def test_bad_cfg_names_file_row_and_problem(tmp_path, mutate, message):
    cfg = yaml.safe_load(SMALL.read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CfgError, match=message) as e:
        build_model(path)
    assert "bad.yaml" in str(e.value)

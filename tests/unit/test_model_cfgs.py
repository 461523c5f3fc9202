"""Every network of the paper from its cfg: size against the paper's table, forward in train and
eval modes, fuse(), gradient flow; and the gradient-path blocks (PRN, CSP fusions, stop gradient,
VoVNet stages, RepConv) on their own."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.paper_figures import PAPER, design_params
from conftest import ROOT
from models.blocks import RepConv
from models.model import build_model
from models.stages import Bottleneck, CSPStage, VoVStage


# The paper's rows (benchmarks/paper_figures.py: its GFLOPs, and the parameters of each design), within
# 1%; the two Deep VoVNet rows within 3%, as the paper does not pin them closer.
TOLERANCE = {"deep-vovnet-elan-seg": 0.03, "deep-vovnet-elan-csp-seg": 0.03}


# The official models users fine-tune: (GFLOPs, at image size, parameters of the inference model: BN and
# RepConv folded, auxiliary heads left out), as the official READMEs print them (YOLOv5 v6.0/v7.0,
# YOLOv7); yolov5l-seg / yolov5x-seg are the paper's rows.
OFFICIAL_SIZES = {
    "yolov5n": (4.5, 640, 1.9e6), "yolov5s": (16.5, 640, 7.2e6), "yolov5m": (49.0, 640, 21.2e6),
    "yolov5l": (109.1, 640, 46.5e6), "yolov5x": (205.7, 640, 86.7e6),
    "yolov5n-seg": (7.1, 640, 2.0e6), "yolov5s-seg": (26.4, 640, 7.6e6), "yolov5m-seg": (70.8, 640, 22.0e6),
    "yolov7": (104.7, 640, 36.9e6), "yolov7x": (189.9, 640, 71.3e6), "yolov7-tiny": (13.8, 640, 6.2e6),
    "yolov7-w6": (360.0, 1280, 70.4e6),
}


def test_every_cfg_in_the_repo_has_a_size_row():
    cfgs = {p.stem for p in (ROOT / "cfg/models").glob("*.yaml")}
    assert cfgs - {"gp-n-seg", "gp-n-seg-lite"} == set(PAPER) | set(OFFICIAL_SIZES)


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_official_cfg_sizes_and_fused_outputs(name):
    """Within 2.5% of the official GFLOPs (YOLOv7's are printed after RepConv folding, which we count
    before) and 3% of the printed (rounded) parameters; fuse() keeps the outputs."""
    torch.manual_seed(0)
    model = build_model(ROOT / "cfg/models" / f"{name}.yaml")
    gflops, size, params = OFFICIAL_SIZES[name]
    assert abs(model.info(size)["gflops"] / gflops - 1) < 0.025
    model.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        pred, _ = model(x)
        fused = model.fuse()
        fused_pred, _ = fused(x)
    aux = {id(p) for j in model.aux_only for p in model.layers[j].parameters()}
    aux |= {id(p) for p in (model.head.aux.parameters() if model.head.aux is not None else [])}
    inference = sum(p.numel() for p in fused.parameters() if id(p) not in aux)
    assert abs(inference / params - 1) < 0.03, f"{name}: {inference / 1e6:.2f}M vs {params / 1e6}M"
    assert torch.allclose(pred, fused_pred, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_cfg_size_forward_fuse_and_gradients(name):
    torch.manual_seed(0)
    path = ROOT / "cfg/models" / f"{name}.yaml"
    assert path.read_text().startswith("# "), "each paper cfg begins with a comment naming its row"
    model = build_model(path)
    gflops, params, tol = PAPER[name].gflops, design_params(name), TOLERANCE.get(name, 0.01)
    info = model.info(640)
    assert abs(info["gflops"] / gflops - 1) < tol, f"{name}: {info['gflops']:.2f} GFLOPs vs {gflops}"
    if params:
        assert abs(info["params"] / 1e6 / params - 1) < tol, f"{name}: {info['params'] / 1e6:.2f}M vs {params}M"
    assert model.stride.tolist() == [8.0, 16.0, 32.0]

    # train mode: per-level raw outputs at strides 8/16/32, prototypes at stride 4; gradients reach layer 0
    model.train()
    out = model(torch.rand(1, 3, 64, 96))
    assert [tuple(p.shape[-3:-1]) if p.ndim == 5 else tuple(p.shape[-2:]) for p in out.preds] == \
        [(8, 12), (4, 6), (2, 3)]
    assert tuple(out.proto.shape) == (1, 32, 16, 24)
    (sum(p.float().mean() for p in out.preds) + out.proto.mean()).backward()
    first = next(model.layers[0].parameters()).grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0

    # eval mode, then fused: same outputs within 1e-4 (BN statistics made non-trivial first)
    model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        x = torch.rand(1, 3, 64, 64)
        pred, proto = model(x)
        n_anchor = 3 if model.head.kind == "anchor" else 1
        assert tuple(pred.shape) == (1, n_anchor * (8 * 8 + 4 * 4 + 2 * 2), 4 + 80 + 32)
        fused_pred, fused_proto = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(pred, fused_pred, atol=1e-4, rtol=1e-4)
    assert torch.allclose(proto, fused_proto, atol=1e-4, rtol=1e-4)


def _input_grad(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    block(x).sum().backward()
    return x.grad


def test_prn_adds_the_identity_to_half_the_channels():
    torch.manual_seed(0)
    prn = Bottleneck(8, 8, partial=0.5).eval()
    x = torch.rand(1, 8, 5, 5)
    with torch.no_grad():
        residual = prn.cv2(prn.cv1(x))
        y = prn(x)
    assert torch.allclose(y[:, :4], residual[:, :4] + x[:, :4]) and torch.allclose(y[:, 4:], residual[:, 4:])


def test_stop_gradient_identity_and_block():
    torch.manual_seed(0)
    x = torch.rand(1, 8, 5, 5)
    plain = Bottleneck(8, 8).eval()
    no_identity = Bottleneck(8, 8, stop="identity").eval()
    no_block = Bottleneck(8, 8, stop="block").eval()
    no_identity.load_state_dict(plain.state_dict())
    no_block.load_state_dict(plain.state_dict())
    g_plain, g_id, g_block = (_input_grad(b, x) for b in (plain, no_identity, no_block))
    # Fig. 9b: the input's gradient is the identity's alone (ones); Fig. 9a: the block's alone
    assert torch.equal(g_block, torch.ones_like(x))
    assert torch.allclose(g_id, g_plain - 1, atol=1e-6) and not torch.allclose(g_id, g_plain)
    # the computational block still learns under Fig. 9b
    assert no_block.cv1.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a residual"):
        Bottleneck(8, 16, stop="identity")


def test_stopgrad_cfgs_really_detach():
    torch.manual_seed(0)
    a = build_model(ROOT / "cfg/models/yolor-csp-stopgrad-a-seg.yaml")
    b = build_model(ROOT / "cfg/models/yolor-csp-stopgrad-b-seg.yaml")
    stops = [m.stop for m in a.modules() if isinstance(m, Bottleneck) and m.stop]
    assert len(stops) == 2 + 8 + 8 + 4 and set(stops) == {"identity"}
    assert {m.stop for m in b.modules() if isinstance(m, Bottleneck) and m.stop} == {"block"}


@pytest.mark.parametrize("fusion, transitions", [("both", 2), ("first", 1), ("last", 1), ("none", 0)])
def test_csp_fusion_variants(fusion, transitions):
    stage = CSPStage(16, 32, n=2, fusion=fusion)
    kept = [name for name in ("cv3", "cv4") if not isinstance(getattr(stage, name), torch.nn.Identity)]
    assert len(kept) == transitions
    assert ("cv3" in kept) == (fusion in ("both", "last")) and ("cv4" in kept) == (fusion in ("both", "first"))
    assert stage(torch.rand(1, 16, 8, 8)).shape == (1, 32, 8, 8)


def test_vov_stage_chains_modules_and_csp_splits_the_input():
    stage = VoVStage(32, 64, 16, modules=3, convs=5)
    assert len(stage.chain) == 15 and stage.transition.conv.in_channels == 32 + 5 * 16
    csp = VoVStage(32, 64, 16, modules=3, convs=5, csp=True)
    assert csp.chain[0].conv.in_channels == 16 and csp.transition.conv.in_channels == 32 + 5 * 16
    assert csp(torch.rand(1, 32, 8, 8)).shape == (1, 64, 8, 8)
    tapped = VoVStage(32, 64, 16, modules=3, convs=5, module_taps=True)
    assert tapped.taps == {4, 9, 10, 11, 12, 13, 14} and tapped.transition.conv.in_channels == 32 + 7 * 16


@pytest.mark.parametrize("c1, c2, s", [(16, 16, 1), (16, 32, 1), (16, 32, 2)])
def test_repconv_fuses_to_one_conv(c1, c2, s):
    torch.manual_seed(0)
    rep = RepConv(c1, c2, 3, s)
    with torch.no_grad():
        for bn in [m for m in rep.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    rep.eval()
    x = torch.rand(2, c1, 9, 9)
    with torch.no_grad():
        ref = rep(x)
        rep.fuse()
        out = rep(x)
    assert rep.identity is None and isinstance(rep.fused, torch.nn.Conv2d)
    assert torch.allclose(ref, out, atol=1e-5)


def test_summary_cli_totals_match_info(capsys):
    from models.summary import main

    assert main([str(ROOT / "cfg/models/yolor-elan-seg.yaml"), "--img-size", "640"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "32 layers, 38,291,453 parameters (38.29M), 143.23 GFLOPs at 640"
    row4 = next(line for line in out if line.lstrip().startswith("4 "))
    assert "ELAN" in row4 and "256x160x160" in row4
    assert main([str(ROOT / "cfg/models/nope.yaml")]) == 2
    assert "model cfg not found" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["AnchorHead", "AnchorFreeHead"])
def test_detection_only_variants_share_the_heads(head):
    """nm = 0: the same head classes without the prototype branch or mask coefficients."""
    import yaml

    cfg = yaml.safe_load((ROOT / "cfg/models/gp-n-seg.yaml").read_text())
    cfg["head"][-1][2:] = [head, ["nc", cfg["anchors"], 0] if head == "AnchorHead" else ["nc", 0]]
    model = build_model(cfg, num_classes=3)
    assert model.nm == 0 and model.head.proto is None
    model.train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out.proto is None and out.nm == 0
    model.eval()
    with torch.no_grad():
        pred, proto = model(torch.rand(1, 3, 64, 64))
    assert proto is None and pred.shape[-1] == 4 + 3


def test_cfg_by_bare_name_from_any_directory(tmp_path, monkeypatch):
    from models.parser import CfgError

    monkeypatch.chdir(tmp_path)
    assert build_model("yolor-elan-11-seg").yaml["name"] == "yolor-elan-11-seg"
    with pytest.raises(CfgError, match=r"yolor-elan: model cfg not found \(a path, or one of: .*yolor-elan-seg"):
        build_model("yolor-elan")


def test_repconv_rows_in_a_cfg_fuse_to_the_same_outputs():
    """YOLOv7's head uses RepConv for its last 3x3 convs: the parser builds it and Model.fuse()
    folds its branches (with every BatchNorm) so the deployed model computes the same thing."""
    import yaml

    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "cfg/models/gp-n-seg.yaml").read_text())
    assert cfg["head"][11][2:] == ["Conv", [128, 3, 2]] and cfg["head"][14][2:] == ["Conv", [256, 3, 2]]
    cfg["head"][11][2] = cfg["head"][14][2] = "RepConv"  # the two stride-2 3x3 convs of the PAN
    cfg["head"][2] = [-1, 1, "RepConv", [128, 3, 1]]      # row 11, was Upsample: same width, identity branch
    cfg["head"].insert(3, [-1, 1, "Upsample", [2]])
    for row in cfg["head"][4:]:
        shift = (lambda f: f + 1 if f >= 11 else f)
        row[0] = [shift(f) for f in row[0]] if isinstance(row[0], list) else (row[0] if row[0] < 0 else shift(row[0]))
    model = build_model(cfg)
    reps = [m for m in model.modules() if isinstance(m, RepConv)]
    assert len(reps) == 3 and reps[0].identity is not None and reps[1].identity is None
    model.eval()
    with torch.no_grad():
        for bn in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
        x = torch.rand(1, 3, 64, 64)
        ref, _ = model(x)
        fused, _ = model.fuse()(x)
    assert all(m.fused is not None for m in reps)
    assert torch.allclose(ref, fused, atol=1e-4, rtol=1e-4)

"""Official YOLOv5 / YOLOv7 checkpoints: read without running their code, the architecture translated
from the file's own cfg, every tensor mapped by role, outputs equal to the official code's."""
from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import OFFICIAL, ROOT, require_shared
from engine.config import Hyp
from models.official.convert import build_from_official, check
from models.model import build_model
from models.official.cfg import translate
from models.official.unpickler import read_official, read_pickle
from models.parser import CfgError, load_cfg
from utils.errors import CheckpointError

FILES = ["yolov5n", "yolov5n-seg", "yolov5n6", "yolov7-w025", "yolov7x-w025", "yolov7-tiny-w050", "yolov7-w6-w025",
         "yolov7-seg-w025"]
# our cfg file for each official file's graph (the files were saved at reduced width: -w025 = x0.25)
OUR_CFG = {"yolov5n": "yolov5n", "yolov5n-seg": "yolov5n-seg", "yolov7-w025": "yolov7", "yolov7x-w025": "yolov7x",
           "yolov7-tiny-w050": "yolov7-tiny", "yolov7-w6-w025": "yolov7-w6", "yolov7-seg-w025": "yolor-elan-seg"}


def official_file(name: str) -> Path:
    return require_shared(OFFICIAL / f"{name}.pt", "official checkpoints")


def resolved(cfg: dict) -> list:
    """A cfg's graph: rows with absolute from-indices, anchors left out (they are data, not graph)."""
    rows = []
    for i, (f, n, block, args) in enumerate(cfg["backbone"] + cfg["head"]):
        froms = [j if j >= 0 else i + j for j in ([f] if isinstance(f, int) else f)]
        args = args[:1] + args[2:] if block == "AnchorHead" else args
        rows.append((froms, n, block, [a for a in args]))
    return rows


@pytest.mark.parametrize("name", [f for f in FILES if f != "yolov5n"])
def test_every_official_file_converts_and_matches_official_outputs(name):
    model, _ = build_from_official(read_official(official_file(name)))
    result = check(model, OFFICIAL / f"{name}.npz")
    assert result.ok, result.line()
    assert result.diffs["boxes"] <= 0.02 and result.diffs["probabilities"] <= 1e-3


def test_release_file_converts_with_the_release_size():
    """yolov5n.pt v6.1: 1,867,405 parameters fused (the release notes' figure)."""
    model, notes = build_from_official(read_official(official_file("yolov5n")))
    assert not notes
    fused = copy.deepcopy(model).eval().fuse()
    assert sum(p.numel() for p in fused.parameters()) == 1867405
    assert abs(model.info()["gflops"] - 4.5) < 0.05
    assert model.head.anchors[0, 0].tolist() == [10.0, 13.0]  # grid units in the file, pixels here


def test_convert_cli_check_passes_and_fails(tmp_path):
    src = official_file("yolov7-seg-w025")
    cmd = [sys.executable, "-m", "models.convert", str(src), "--out", str(tmp_path / "x.pt"),
           "--check", str(OFFICIAL / "yolov7-seg-w025.npz")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("check passed: largest differences: boxes")
    assert "ImplicitM (the official ISegment forward never applies it)" in r.stderr
    data = dict(np.load(OFFICIAL / "yolov7-seg-w025.npz"))
    data["protos"] = data["protos"] + 2e-3  # beyond the 1e-3 limit
    np.savez(tmp_path / "off.npz", **data)
    r = subprocess.run(cmd[:-1] + [str(tmp_path / "off.npz")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "check FAILED" in r.stdout and "protos 0.002" in r.stdout


@pytest.mark.parametrize("name", sorted(OUR_CFG))
def test_translated_graph_is_our_cfg_file(name):
    """Each official graph translates to the cfg file users train from (same rows, same sizes)."""
    off = read_official(official_file(name))
    ours, _ = load_cfg(OUR_CFG[name])
    assert resolved(translate(off.cfg).cfg) == resolved(ours)
    scaled = {**ours, "depth_multiple": off.cfg["depth_multiple"], "width_multiple": off.cfg["width_multiple"]}
    model, _ = build_from_official(off)
    assert {k: v.shape for k, v in build_model(scaled).state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_yolov7_seg_at_full_width_is_yolor_elan_seg():
    """At full width the u7 yolov7-seg graph is cfg/models/yolor-elan-seg.yaml: 38,292,218 parameters as
    the official code counts them, less the 3 x 255 of the ImplicitM its head holds but never applies."""
    off = copy.deepcopy(read_official(official_file("yolov7-seg-w025")).cfg)
    off["width_multiple"] = 1.0
    cfg = translate(off).cfg
    assert resolved(cfg) == resolved(load_cfg("yolor-elan-seg")[0])
    assert sum(p.numel() for p in build_model(cfg).parameters()) == 38_292_218 - 3 * 255


def test_w6_aux_heads_train_and_are_skipped_at_inference():
    model, _ = build_from_official(read_official(official_file("yolov7-w6-w025")))
    assert len(model.aux_only) == 4  # the four aux 3x3 convs
    x = torch.rand(1, 3, 128, 128)
    out = model.train()(x)
    assert len(out.aux) == 4 and [p.shape for p in out.aux] == [p.shape for p in out.preds]
    calls = []
    hooks = [model.layers[i].register_forward_hook(lambda *a: calls.append(1)) for i in model.aux_only]
    with torch.no_grad():
        model.eval()(x)
    assert not calls
    for h in hooks:
        h.remove()


# ---- without ../shared: translation rules on a small official-style cfg written here ------------

def _elan_rows(c: int, src: int) -> list:
    """An ELAN spelled out as YOLOv7 cfgs do: 1x1, 1x1 (from the block input), four 3x3, Concat, 1x1."""
    return [[-1 if src == -1 else src, 1, "Conv", [c, 1, 1]], [-2, 1, "Conv", [c, 1, 1]],
            [-1, 1, "Conv", [c, 3, 1]], [-1, 1, "Conv", [c, 3, 1]], [-1, 1, "Conv", [c, 3, 1]],
            [-1, 1, "Conv", [c, 3, 1]], [[-1, -3, -5, -6], 1, "Concat", [1]], [-1, 1, "Conv", [4 * c, 1, 1]]]


def _mp_rows(c: int, extra: list) -> list:
    return [[-1, 1, "MP", []], [-1, 1, "Conv", [c, 1, 1]], [-3, 1, "Conv", [c, 1, 1]], [-1, 1, "Conv", [c, 3, 2]],
            [[-1, -3, *extra], 1, "Concat", [1]]]


SMALL = {"nc": 3, "depth_multiple": 1.0, "width_multiple": 0.5, "anchors": [[10, 13, 16, 30, 33, 23]] * 2,
         "backbone": [[-1, 1, "Conv", [16, 3, 2]], *_elan_rows(8, -1), *_mp_rows(16, []), *_elan_rows(16, -1)],
         "head": [[-1, 1, "Conv", [32, 3, 2]], [13, 1, "Conv", [32, 3, 1]], [[-1, -2], 1, "IDetect", ["nc", "anchors"]]]}


def test_official_rows_collapse_into_our_blocks():
    t = translate(copy.deepcopy(SMALL))
    rows = [(f, b, a) for f, _, b, a in t.cfg["backbone"] + t.cfg["head"]]
    assert rows[:4] == [(-1, "Conv", [16, 3, 2]), (-1, "ELAN", [32, 8, 4, 2]), (-1, "MPDown", [32]),
                        (-1, "ELAN", [64, 16, 4, 2])]
    assert rows[4:6] == [(-1, "Conv", [32, 3, 2]), (2, "Conv", [32, 3, 1])]
    assert rows[6][0] == [-1, 4] and rows[6][1] == "AnchorHead" and rows[6][2][4] is True
    assert t.official_index[8] == 1 and t.official_index[13] == 2 and t.official_index[21] == 3
    model = build_model(t.cfg)
    assert len(model.layers) == 7 and model.layers[1].tap == 2


def test_block_read_from_outside_stays_flat():
    """An inner conv of an ELAN that another row reads cannot become a block: the rows stay single."""
    cfg = copy.deepcopy(SMALL)
    cfg["head"][1] = [3, 1, "Conv", [32, 3, 1]]  # reads the ELAN's first 3x3 conv
    t = translate(cfg)
    blocks = [r[2] for r in t.cfg["backbone"]]
    assert blocks.count("ELAN") == 1 and blocks.count("Concat") == 1
    build_model(t.cfg)


@pytest.mark.parametrize("row, match", [
    ([-1, 1, "GhostConv", [32, 3, 2]], r"official row 9: module GhostConv is not supported"),
    ([-1, 1, "Conv", [32, 3, 2, None, 1, "nn.Hardswish()"]], r"official row 9 \(Conv\): activation nn.Hardswish\(\)"),
])
def test_unknown_official_rows_name_the_row(row, match):
    cfg = copy.deepcopy(SMALL)
    cfg["backbone"][9] = row
    with pytest.raises(CfgError, match=match):
        translate(cfg)


def test_leftover_official_tensor_names_the_layer(monkeypatch):
    off = read_official(official_file("yolov7-tiny-w050"))
    off.tensors["model.3.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"official layer 3 \(Conv\): tensor model.3.extra.weight has no place"):
        build_from_official(off)


# ---- the restricted unpickler: getattr only on stand-ins, never reaching a real attribute --------

def _pickle(tmp_path: Path, payload: bytes) -> Path:
    """A torch-style zip archive whose data.pkl is `payload` (a hand-written protocol-2 pickle)."""
    import zipfile

    path = tmp_path / "f.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return path


GETATTR = b"c__builtin__\ngetattr\n"


@pytest.mark.parametrize("payload, match", [
    # getattr(os, 'system')('touch marker'): reaching `os` needs a global, which is refused
    (GETATTR + b"(cos\npath\nS'system'\ntR(S'touch MARK'\ntR.", r"refused: the pickle references os\.path"),
    # getattr(builtins, 'eval'): the builtins module is no stand-in
    (GETATTR + b"(c__builtin__\nset\nS'__init__'\ntR.", r"refused: the pickle calls getattr\(set, '__init__'\)"),
    (GETATTR + b"(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR.", r"references __builtin__\.__import__"),
])
def test_getattr_tricks_are_refused(tmp_path, payload, match):
    marker = tmp_path / "MARK"
    path = _pickle(tmp_path, payload.replace(b"MARK", str(marker).encode()))
    with pytest.raises(CheckpointError, match=match):
        read_pickle(path)
    assert not marker.exists()


def test_getattr_on_a_stand_in_never_reaches_a_real_callable(tmp_path):
    """getattr(getattr(Conv, '__init__'), '__globals__') would reach module globals (and through them
    builtins) in a naive unpickler; here every step is another inert stand-in, and calling one runs nothing."""
    marker = tmp_path / "MARK"
    payload = (GETATTR + b"(" + GETATTR + b"(cmodels.common\nConv\nS'__init__'\ntRS'__globals__'\ntR"
               b"(S'touch " + str(marker).encode() + b"'\ntR.")
    obj = read_pickle(_pickle(tmp_path, payload))
    from models.official.unpickler import StandIn

    assert isinstance(obj, StandIn) and obj.qualname == "models.common.Conv.__init__.__globals__"
    assert not marker.exists()
    escape = GETATTR + b"(cmodels.common\nConv\nS'__class__'\ntR(S'x'\n(t}tR."  # type('x', (), {})?
    assert isinstance(read_pickle(_pickle(tmp_path, escape)), StandIn)


def test_real_segmentation_files_pickle_getattr_and_load(tmp_path):
    """Official Segment/ISegment modules pickle getattr(<Detect class>, 'forward'): read as a stand-in."""
    off = read_official(official_file("yolov5n-seg"))
    head_state = off.layers[-1].state
    assert head_state["detect"].qualname == "models.yolo.Detect.forward"
    with pytest.raises(pickle.UnpicklingError):  # the stand-in is not what torch's safe loader accepts
        torch.load(official_file("yolov5n-seg"), weights_only=True)


def test_w6_aux_heads_get_a_quarter_weighted_loss():
    """Training a converted W6: the aux heads' terms are added at 0.25 and their convs receive gradients."""
    from models.loss.losses import build_criterion
    from utils.structures import Batch

    model, _ = build_from_official(read_official(official_file("yolov7-w6-w025")))
    hyp = Hyp.load().loss
    boxes = torch.tensor([[20.0, 30.0, 90.0, 100.0], [60.0, 10.0, 120.0, 50.0]])
    batch = Batch(torch.zeros(2, 3, 128, 128, dtype=torch.uint8), torch.tensor([0, 1]), torch.tensor([0, 5]), boxes,
                  torch.zeros(2, 32, 32, dtype=torch.uint8), [0, 1], ["", ""], [(128, 128)] * 2, [((1.0, 1.0), (0.0, 0.0))] * 2)
    torch.manual_seed(0)
    out = model.train()(torch.rand(2, 3, 128, 128))
    crit = build_criterion(hyp, "anchor", 128)
    loss, terms = crit(out, batch)
    loss.backward()
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in model.head.aux)
    out.aux = None
    _, main_only = crit(out, batch)
    assert all(terms[k] > main_only[k] for k in ("box", "obj", "cls"))

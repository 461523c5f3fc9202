"""YOLOv7 P6 family (E6, D6, E6E): the official cfg graphs translate into our blocks with exactly the
official code's parameter counts, and their auxiliary heads read the layers the official head reads.

The official rows are generated here from the graphs' regular structure (no fixture files needed).
The counts are what the official code (WongKinYiu/yolov7 main, `models.yolo.Model`) gives for its own
cfg/training/yolov7-{e6,d6,e6e}.yaml: `sum(p.numel() for p in model.parameters())`. Files of these graphs
written by the official code (width 0.25, random weights) convert with outputs equal to the official ones,
main and auxiliary; being GPL-derived they are not kept here, hence graph-only tests.
"""
from __future__ import annotations

import copy

import pytest
import torch

from models.model import build_model
from models.official.cfg import translate
from models.parser import load_cfg, parse_layers

P6_ANCHORS = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
              [436, 615, 739, 380, 925, 792]]


def _elan(c: int, ch: int, n: int, tap: int, out: int, src: int = -1) -> list:
    """An ELAN as the official cfgs spell it: two 1x1 convs of the input at `src`, a chain of n 3x3
    convs from the second, Concat [every tap-th chain conv newest first, 2nd 1x1, 1st 1x1], 1x1."""
    return [[src, 1, "Conv", [c, 1, 1]], [src - 1, 1, "Conv", [c, 1, 1]],
            *[[-1, 1, "Conv", [ch, 3, 1]] for _ in range(n)],
            [[*range(-1, -n - 1, -tap), -n - 1, -n - 2], 1, "Concat", [1]], [-1, 1, "Conv", [out, 1, 1]]]


def p6_cfg(base: int, n: int, double: bool) -> dict:
    """The official E6 (base 80, chains of 6), D6 (base 96, chains of 8) and E6E (E6 with every ELAN
    doubled: a second ELAN of the same input, the two summed by Shortcut) graphs."""
    rows = [[-1, 1, "ReOrg", []], [-1, 1, "Conv", [base, 3, 1]]]

    def block(c: int, ch: int, tap: int, out: int) -> tuple[int, int]:
        """Append an ELAN (E6E: a pair); (the output row, the row the auxiliary head reads)."""
        first = _elan(c, ch, n, tap, out)
        rows.extend(first)
        if double:
            rows.extend(_elan(c, ch, n, tap, out, -len(first) - 1) + [[[-1, -len(first) - 1], 1, "Shortcut", [1]]])
        return len(rows) - 1, len(rows) - 1 - double

    stages = []
    for mult, c in zip([2, 4, 8, 12, 16], [64, 128, 256, 384, 512]):  # P2/4 .. P6/64
        rows.append([-1, 1, "DownC", [base * mult]])
        stages.append(block(c, c, 2, base * mult)[0])
    backbone, rows = rows, []
    rows.append([-1, 1, "SPPCSPC", [base * 8]])
    offset = len(backbone)
    down = [(offset, offset)]  # top-down outputs from the SPPCSPC (P6) on: (output, aux tap)
    for mult, c, lateral in zip([6, 4, 2], [384, 256, 128], stages[3:0:-1]):
        rows += [[-1, 1, "Conv", [base * mult, 1, 1]], [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
                 [lateral, 1, "Conv", [base * mult, 1, 1]], [[-1, -2], 1, "Concat", [1]]]
        down.append(tuple(offset + k for k in block(c, c // 2, 1, base * mult)))
    outs = [down[-1][0]]
    for mult, c, (skip, _) in zip([4, 6, 8], [256, 384, 512], down[2::-1]):
        rows += [[-1, 1, "DownC", [base * mult]], [[-1, skip], 1, "Concat", [1]]]
        outs.append(offset + block(c, c // 2, 1, base * mult)[0])
    chans = [base * m for m in (4, 8, 12, 16)]
    rows += [[j, 1, "Conv", [c, 3, 1]] for j, c in zip(outs, chans)]
    rows += [[j, 1, "Conv", [c, 3, 1]] for (_, j), c in zip(down[::-1], chans)]
    head_in = list(range(offset + len(rows) - 8, offset + len(rows)))
    rows.append([head_in, 1, "IAuxDetect", ["nc", "anchors"]])
    return {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": P6_ANCHORS,
            "backbone": backbone, "head": rows}


# model: (cfg, official rows, our rows, official parameters at width 1.0, at width 0.25)
P6 = {"yolov7-e6": (p6_cfg(80, 6, False), 145, 46, 111_898_292, 7_323_748),
      "yolov7-d6": (p6_cfg(96, 8, False), 167, 46, 154_709_364, 10_063_380),
      "yolov7-e6e": (p6_cfg(80, 6, True), 266, 68, 166_408_884, 10_740_452)}


def _scaled(cfg: dict, width: float) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["width_multiple"] = width
    return cfg


def _params(cfg: dict, name: str) -> tuple[int, int]:
    """(layers, parameters) of the layers a cfg describes, sized on the meta device (nothing allocated)."""
    with torch.device("meta"):
        modules, _, _ = parse_layers(cfg, name)
    return len(modules), sum(p.numel() for p in modules.parameters())


@pytest.mark.parametrize("name", sorted(P6))
def test_p6_translation_has_the_official_parameter_count(name):
    official, rows, layers, full, quarter = P6[name]
    assert len(official["backbone"]) + len(official["head"]) == rows
    assert _params(translate(_scaled(official, 1.0)).cfg, name) == (layers, full)
    assert _params(translate(_scaled(official, 0.25)).cfg, name) == (layers, quarter)


def test_e6e_translation_builds_and_trains_its_aux_heads():
    """The translated E6E runs: strides 8..64, four auxiliary outputs shaped as the main ones in
    training, the four aux-only convs skipped at inference."""
    model = build_model(translate(_scaled(P6["yolov7-e6e"][0], 0.25)).cfg)
    assert sum(p.numel() for p in model.parameters()) == P6["yolov7-e6e"][4]
    assert model.stride.tolist() == [8, 16, 32, 64]
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = model.train()(x)
        assert [p.shape for p in out.aux] == [p.shape for p in out.preds] and len(out.preds) == 4
        assert len(model.aux_only) == 4
        pred, _ = model.eval()(x)
    assert pred.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2), 84)


def test_w6_cfg_file_has_the_official_parameter_count():
    assert _params(load_cfg("yolov7-w6")[0], "yolov7-w6") == (46, 82_312_436)


@pytest.mark.parametrize("name", sorted(P6))
def test_p6_aux_heads_read_the_official_rows(name):
    """The eight head inputs are the layers the official rows name; E6E's auxiliary convs read the
    second ELAN of a pair, before the Shortcut, as the official graph does."""
    official = P6[name][0]
    t = translate(_scaled(official, 0.25))
    head_rows = official["head"][-1][0]
    feeders = [official["head"][j - len(official["backbone"])][0] for j in head_rows]
    with torch.device("meta"):
        _, froms, _ = parse_layers(t.cfg, name)
    ours = froms[-1]
    assert ours == [t.official_index[j] for j in head_rows]
    fed = [f if f >= 0 else j + f for j, f in ((j, froms[j]) for j in ours)]
    assert fed == [t.official_index[j] for j in feeders]
    blocks = [row[2] for row in t.cfg["backbone"] + t.cfg["head"]]
    assert {blocks[f] for f in fed[4:]} == {"ELAN", "SPPCSPC"}
    pairs = 11 if name == "yolov7-e6e" else 0  # E6E: every one of the 11 ELANs is a summed pair
    assert blocks.count("Sum") == pairs and blocks.count("ELAN") == 11 + pairs and blocks.count("DownC") == 8

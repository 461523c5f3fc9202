"""Gradient path analysis on hand-built networks with known answers (paper sections 3-4)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.train.hooks import stage_grad_norms
from models.gradpath.analysis import analyze


@pytest.fixture(autouse=True)
def one_thread():
    # two threads on a shared 2-core box spin-wait: one tiny forward takes seconds instead of ms
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cbr(c1: int, c2: int, k: int = 3, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Res(nn.Module):
    """Residual block of two convs; `partial`: PRN (identity on the first half of the channels,
    by slicing or by a binary mask); `stop`: Fig. 9 'a' detaches the identity, 'b' the block input."""

    def __init__(self, c: int, partial: str = "", stop: str = ""):
        super().__init__()
        self.cv1, self.cv2, self.partial, self.stop = cbr(c, c), cbr(c, c), partial, stop
        self.register_buffer("mask", (torch.arange(c) < c // 2).float().view(1, c, 1, 1))

    def forward(self, x):
        identity = x.detach() if self.stop == "a" else x
        y = self.cv2(self.cv1(x.detach() if self.stop == "b" else x))
        h = y.shape[1] // 2
        if self.partial == "slice":
            return torch.cat([y[:, :h] + identity[:, :h], y[:, h:]], 1)
        if self.partial == "mask":
            return y + identity * self.mask
        return y + identity


class CSPStage(nn.Module):
    """Fig. 5: half the channels through n convs, the other half across; fusion 'both' (b),
    'first' (c), 'last' (d) or 'none'."""

    def __init__(self, c: int, n: int, fusion: str):
        super().__init__()
        h = c // 2
        self.block = nn.Sequential(*(cbr(h, h) for _ in range(n)))
        self.trans_b = cbr(h, h, 1) if fusion in ("both", "last") else None
        self.trans_c = cbr(c, c, 1) if fusion in ("both", "first") else None

    def forward(self, x):
        a, b = x.chunk(2, 1)
        y = self.block(a)
        y = torch.cat([self.trans_b(y) if self.trans_b is not None else y, b], 1)
        return self.trans_c(y) if self.trans_c is not None else y


class OSA(nn.Module):
    """VoVNet one-shot aggregation: n chained convs, input and all outputs concatenated, then a
    1x1 transition (c_out > 0) or none."""

    def __init__(self, c_in: int, c_mid: int, n: int, c_out: int = 0):
        super().__init__()
        self.convs = nn.ModuleList(cbr(c_in if i == 0 else c_mid, c_mid) for i in range(n))
        self.trans = cbr(c_in + n * c_mid, c_out, 1) if c_out else None
        self.c_out = c_out or c_in + n * c_mid

    def forward(self, x):
        feats, y = [x], x
        for conv in self.convs:
            y = conv(y)
            feats.append(y)
        y = torch.cat(feats, 1)
        return self.trans(y) if self.trans is not None else y


class Dense(nn.Module):
    def __init__(self, c0: int, growth: int, n: int):
        super().__init__()
        self.stem = cbr(3, c0)
        self.layers = nn.ModuleList(cbr(c0 + i * growth, growth) for i in range(n))

    def forward(self, x):
        feats = self.stem(x)
        for layer in self.layers:
            feats = torch.cat([feats, layer(feats)], 1)
        return feats


def resnet(n: int, **kw) -> nn.Sequential:
    return nn.Sequential(cbr(3, 8), *(Res(8, **kw) for _ in range(n)))


def test_plain_chain_paths_equal_position_from_output():
    n = 5
    rep = analyze(nn.Sequential(*(cbr(3 if i == 0 else 4, 4) for i in range(n))), img_size=16)
    assert [(lp.shortest, lp.longest, lp.sources) for lp in rep.layers] == [(n - i, n - i, 1) for i in range(n)]
    assert rep.max_shortest == rep.longest == n and rep.unreached == []


def test_residual_stack_shortest_path_through_identities():
    n = 4
    rep = analyze(resnet(n), img_size=16)
    for k in range(n):  # block k+1 of n: m later blocks, each either skipped or 2 steps
        m = n - 1 - k
        cv2, cv1 = rep[f"{k + 1}.cv2.0"], rep[f"{k + 1}.cv1.0"]
        assert cv2.timestamps == tuple(range(1, 2 * m + 2, 2)) and cv2.sources == 2 ** m
        assert cv1.timestamps == tuple(t + 1 for t in cv2.timestamps)
    assert rep["0.0"].shortest == 1 and rep["0.0"].sources == 2 ** n
    assert rep.max_shortest == 2 and rep.longest == 2 * n + 1


def test_dense_block_counts_every_subset_of_later_layers():
    n = 4
    rep = analyze(Dense(4, 2, n), img_size=16)
    for i in range(n):
        lp = rep[f"layers.{i}.0"]
        assert lp.timestamps == tuple(range(1, n - i + 1)) and lp.sources == 2 ** (n - 1 - i)
    assert rep["stem.0"].timestamps == tuple(range(1, n + 2)) and rep["stem.0"].sources == 2 ** n
    assert rep.max_shortest == 1


@pytest.mark.parametrize("partial", ["slice", "mask"])
def test_prn_gives_channel_groups_more_distinct_timestamps_than_resnet(partial):
    n = 3
    res, prn = analyze(resnet(n), img_size=16), analyze(resnet(n, partial=partial), img_size=16)
    # same topology and path counts per layer ...
    assert [(lp.timestamps, lp.sources) for lp in prn.layers] == [(lp.timestamps, lp.sources) for lp in res.layers]
    # ... but the masked channels of every cv2 (except the last) miss the timestamp of the identity
    cv2 = prn["1.cv2.0"]
    assert [(g.start, g.end, g.timestamps) for g in cv2.groups] == [(0, 4, (1, 3, 5)), (4, 8, (3, 5))]
    assert all(lp.timestamp_sets == 1 for lp in res.layers)
    assert prn.timestamp_sets == res.timestamp_sets + n  # cv2 of blocks 1..n-1 and the stem


def csp(fusion: str, stages: int = 2, n: int = 2) -> nn.Sequential:
    # each stage starts with a (downsampling) conv, as in CSPNet, so stages do not share channel routes
    return nn.Sequential(cbr(3, 8), *(m for _ in range(stages) for m in (cbr(8, 8), CSPStage(8, n, fusion))))


def test_csp_fusion_variants_shorten_paths_as_section_3_2_states():
    reps = {f: analyze(csp(f), img_size=16) for f in ("both", "first", "last", "none")}
    both, first, last, none = (reps[f] for f in ("both", "first", "last", "none"))
    block = [lp.name for lp in both.layers if ".block." in lp.name]
    # fusion first: the computational block of every stage is one step closer
    assert all(first[nm].shortest == both[nm].shortest - 1 for nm in block)
    # fusion last: every layer (both variants have) is at least one step closer
    common = [lp.name for lp in both.layers if lp.name in {x.name for x in last.layers}]
    assert common and all(last[nm].shortest <= both[nm].shortest - 1 for nm in common)
    # no fusion is shortest everywhere; network rule: none < last < first < both
    assert all(none[nm].shortest <= min(r[nm].shortest for r in (both, first, last)) for nm in block)
    assert none.max_shortest < last.max_shortest < first.max_shortest < both.max_shortest
    # the split gives the two channel halves of the conv before it different timestamps
    assert all(r["1.0"].timestamp_sets == 2 and r["3.0"].timestamp_sets == 2 for r in reps.values())


def vovnet(modules: int, transitions: bool) -> nn.Sequential:
    layers, c = [cbr(3, 8)], 8
    for i in range(modules):
        osa = OSA(c, 4, 2, 8 if transitions or i == modules - 1 else 0)
        layers.append(osa)
        c = osa.c_out
    return nn.Sequential(*layers)


def test_vovnet_transitions_lengthen_every_shortest_path():
    with_t = [analyze(vovnet(m, True), img_size=16).max_shortest for m in (2, 3, 4)]
    without = [analyze(vovnet(m, False), img_size=16).max_shortest for m in (2, 3, 4)]
    assert with_t == [3, 4, 5]  # one step more per stacked OSA module
    assert without == [2, 2, 2]  # only the last module's transition remains


def test_stop_gradient_variants_of_fig9():
    n = 3
    a = analyze(resnet(n, stop="a"), img_size=16)  # identity detached: a plain net
    assert all(lp.shortest == lp.longest and lp.sources == 1 for lp in a.layers)
    assert a.max_shortest == a.longest == 2 * n + 1
    b = analyze(resnet(n, stop="b"), img_size=16)  # block input detached: shortest 1, longest 2
    assert b.longest == 2 and b.max_shortest == 2 and b["0.0"].timestamps == (1,)
    assert all(b[f"{k}.cv2.0"].timestamps == (1,) and b[f"{k}.cv1.0"].timestamps == (2,) for k in (1, 2, 3))


def test_depthwise_conv_keeps_channels_apart_and_cut_channels_are_dead():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.dw, self.head = cbr(3, 8), cbr(8, 8, g=8), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.dw(self.stem(x))[:, :4].mean((2, 3)))

    rep = analyze(Net(), img_size=16)
    assert [(g.start, g.end, g.timestamps) for g in rep["stem.0"].groups] == [(0, 4, (3,)), (4, 8, ())]
    assert rep["head"].timestamps == (1,) and rep["dw.0"].shortest == 2


def test_detached_layers_are_listed_as_unreached():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 4), cbr(3, 4)

        def forward(self, x):
            return self.a(x) + self.b(x).detach()

    rep = analyze(Net(), img_size=16)
    assert [lp.name for lp in rep.layers] == ["a.0"] and rep.unreached == ["b.0"]


def test_analyze_leaves_model_state_alone():
    m = resnet(2).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    analyze(m, img_size=16)
    assert not m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_stage_grad_norms_groups_parameters_by_top_level_layer():
    m = resnet(2)
    m(torch.randn(2, 3, 16, 16)).square().mean().backward()
    norms = stage_grad_norms(m)
    assert set(norms) == {"0_Sequential", "1_Res", "2_Res", "total", "nonfinite"}
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m[1].parameters()])).item()
    assert norms["1_Res"] == pytest.approx(want, rel=1e-5)
    assert norms["total"] == pytest.approx(math.hypot(norms["0_Sequential"], norms["1_Res"], norms["2_Res"]))
    assert norms["nonfinite"] == 0.0
    next(m[2].parameters()).grad[0] = float("nan")
    assert stage_grad_norms(m)["nonfinite"] == 1.0


def test_cli_on_a_parsed_cfg(root, tmp_path, capsys):
    from models.gradpath.report import main

    cfg = str(root / "cfg/models/gp-n-seg.yaml")
    png = tmp_path / "paths.png"
    assert main([cfg, "--img-size", "64", "--plot", str(png), "--compare", cfg]) == 0
    out = capsys.readouterr().out
    assert "| 26_AnchorHead | 6 | 1-3 |" in out  # head prediction convs: 1 step; proto: up to 3
    assert "longest shortest gradient path" in out and "| gp-n-seg#1 |" in out
    assert png.stat().st_size > 10_000

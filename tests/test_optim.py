"""Optimizer parameter groups, LR schedule, warmup and EMA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.ema import ModelEMA
from engine.optim import build_optimizer, lr_lambda, parameter_groups, warmup
from utils.config import load_hyp


class _Implicit(nn.Module):
    def __init__(self):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, 4, 1, 1))


class ImplicitA(_Implicit):
    pass


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), ImplicitA(), nn.Conv2d(4, 2, 1))


def test_three_groups_and_no_decay_on_norm_bias_implicit():
    net = _net()
    decay, norm, biases = parameter_groups(net)
    assert {id(p) for p in decay} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in norm} == {id(net[1].weight)}
    assert {id(p) for p in biases} == {id(net[1].bias), id(net[2].implicit), id(net[3].bias)}
    opt = build_optimizer(net, "SGD", 0.01, 0.937, 5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert opt.param_groups[0]["nesterov"]
    assert isinstance(build_optimizer(net, "AdamW", 0.001, 0.9, 5e-4), torch.optim.AdamW)
    with pytest.raises(ValueError, match="--optimizer"):
        build_optimizer(net, "Lion", 0.01, 0.9, 0.0)


def test_schedules_start_at_one_and_end_at_lrf():
    for linear in (False, True):
        f = lr_lambda(100, 0.1, linear)
        assert f(0) == pytest.approx(1.0) and f(99) == pytest.approx(0.1)
        assert all(f(e) >= f(e + 1) - 1e-12 for e in range(99))


def test_warmup_ramps_lr_and_momentum():
    hyp = load_hyp()
    opt = build_optimizer(_net(), "SGD", 0.01, hyp["momentum"], 5e-4)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    warmup(opt, 0, 100, 1.0, hyp)
    assert opt.param_groups[0]["lr"] == pytest.approx(hyp["warmup_bias_lr"])
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[1]["momentum"] == pytest.approx(0.8)
    warmup(opt, 100, 100, 1.0, hyp)
    assert all(g["lr"] == pytest.approx(0.01) for g in opt.param_groups)
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.937)


def test_ema_tracks_the_model():
    net = _net()
    ema = ModelEMA(net, decay=0.5, tau=1e-9)  # decay 0.5 from the first update
    with torch.no_grad():
        net[0].weight.add_(1.0)
    before = ema.ema[0].weight.clone()
    ema.update(net)
    assert torch.allclose(ema.ema[0].weight, 0.5 * before + 0.5 * net[0].weight)
    assert not any(p.requires_grad for p in ema.ema.parameters())


"""elementwise_threads: the optimizer step and the EMA update on one CPU thread give bitwise the
numbers they give on the run's threads, and the run's thread count comes back."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.device import elementwise_threads
from engine.train.ema import ModelEMA
from engine.train.optim import build_optimizer


def _model() -> nn.Module:
    # tensors above ATen's parallel grain (32768 elements) and below it, BatchNorm buffers included
    return nn.Sequential(nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.SiLU(), nn.Conv2d(128, 512, 1),
                         nn.BatchNorm2d(512), nn.Linear(512, 300))


def _train(optimizer: str, single: bool, steps: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = _model()
    ema, opt = ModelEMA(model), build_optimizer(model, optimizer, 0.01, 0.937, 0.0005)
    g = torch.Generator().manual_seed(1)
    device = torch.device("cpu")
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 0.1
        for b in model.buffers():
            if b.dtype.is_floating_point:
                b.add_(torch.rand(b.shape, generator=g))  # the forward's running statistics
        with elementwise_threads(device) if single else torch.no_grad():
            opt.step()
        with elementwise_threads(device) if single else torch.no_grad():
            ema.update(model)
    return [t.clone() for t in [*model.state_dict().values(), *ema.ema.state_dict().values()]]


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_one_thread_steps_and_ema_updates_equal_the_run_threads_bitwise(optimizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # the comparison needs a parallel run
    try:
        ref, one = _train(optimizer, False), _train(optimizer, True)
    finally:
        torch.set_num_threads(threads)
    assert len(ref) == len(one) and all(torch.equal(a, b) for a, b in zip(ref, one))


def test_thread_count_restored_even_after_an_error_and_left_alone_on_a_gpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyError):
            with elementwise_threads(torch.device("cpu")):
                assert torch.get_num_threads() == 1
                raise KeyError("x")
        assert torch.get_num_threads() == 2
        with elementwise_threads(torch.device("cuda")):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)

"""Optimizer parameter groups, LR schedule, warmup, accumulation, the mosaic schedule and EMA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.train.ema import ModelEMA
from engine.train.optim import accumulation, build_optimizer, lr_lambda, parameter_groups, warmup, warmup_iterations
from engine.config import Hyp, RunConfig, TrainOptions


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


def test_schedules_fall_from_one_towards_lrf():
    """Cosine over `epochs` as YOLOv7 (and YOLOv5's --cos-lr) schedule it (1, 0.75, 0.25 of the way
    for 3 epochs: the last epoch does not sit at lrf); "linear" as YOLOv7's --linear-lr, reaching
    lrf at the last; "linear-yolov5" as YOLOv5's default, a third of the way per epoch of 3."""
    cos, lin, v5 = (lr_lambda(3, 0.01, s) for s in ("cosine", "linear", "linear-yolov5"))
    assert [cos(e) for e in range(3)] == pytest.approx([1.0, 1 - 0.25 * 0.99, 1 - 0.75 * 0.99])
    assert [lin(e) for e in range(3)] == pytest.approx([1.0, 1 - 0.5 * 0.99, 0.01])
    assert [v5(e) for e in range(3)] == pytest.approx([1.0, 1 - 0.99 / 3, 1 - 2 * 0.99 / 3])
    for schedule in ("cosine", "linear", "linear-yolov5"):
        f = lr_lambda(100, 0.1, schedule)
        assert f(0) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=1e-2)
        assert all(f(e) >= f(e + 1) - 1e-12 for e in range(99))
    with pytest.raises(ValueError, match="--lr-schedule step"):
        lr_lambda(3, 0.01, "step")


def test_a_run_saved_before_lr_schedule_resumes_with_its_schedule():
    from engine.config import saved_options

    assert TrainOptions(**saved_options({"epochs": 5, "linear_lr": True})).lr_schedule == "linear"
    assert TrainOptions(**saved_options({"epochs": 5, "linear_lr": False})).lr_schedule == "cosine"
    assert TrainOptions(**saved_options({"lr_schedule": "linear-yolov5"})).lr_schedule == "linear-yolov5"


def test_warmup_lasts_at_least_the_minimum_on_tiny_datasets():
    hyp = Hyp.load()
    assert hyp.warmup_min_iters == 100  # YOLOv5's minimum
    assert warmup_iterations(hyp, 8) == 100  # coco128 at batch 16: 3 epochs would be 24 batches
    assert warmup_iterations(hyp, 1000) == 3000
    assert warmup_iterations(hyp.replace(warmup_epochs=0.0), 8) == 100
    assert warmup_iterations(hyp.replace(warmup_epochs=0.0, warmup_min_iters=0), 8) == 0


def test_accumulation_ramps_to_the_nominal_batch_over_the_warmup():
    # batch 16, nominal 64: 1 batch per step at first, 4 from the end of the warmup on
    assert [accumulation(it, 100, 4) for it in (0, 16, 17, 50, 99, 100, 10_000)] == [1, 1, 2, 2, 4, 4, 4]
    assert accumulation(0, 0, 4) == 4  # no warmup


def test_warmup_ramps_lr_and_momentum():
    hyp = Hyp.load()
    opt = build_optimizer(_net(), "SGD", 0.01, hyp.momentum, 5e-4)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    warmup(opt, 0, 100, 1.0, hyp)
    assert opt.param_groups[0]["lr"] == pytest.approx(hyp.warmup_bias_lr)
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



def _stepping_trainer(batches_per_epoch: int, accumulate: int, n_warmup: int):
    """The real Trainer built from a one-weight model, a loader of constant batches and a config
    whose nominal batch makes `accumulate` batches per step; the loss has gradient 1 per batch,
    so each optimizer step records how many batches it summed."""
    from engine.train.hooks import Hook
    from engine.train.trainer import Trainer
    from utils.structures import Batch

    model = nn.Linear(1, 1, bias=False)
    model.forward = lambda images: model.weight.sum() + 0 * images.sum()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    steps = []

    class RecordGradient(Hook):
        def before_optimizer_step(self, trainer):
            steps.append(float(model.weight.grad))
    empty = torch.zeros(0, dtype=torch.int64)
    batch = Batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), empty, empty, torch.zeros(0, 4),
                  torch.zeros(0, 1, 1, dtype=torch.uint8), [0], [""], [(4, 4)], [((1.0, 1.0), (0.0, 0.0))])
    hyp = Hyp.load().replace(nominal_batch=accumulate, lr0=1e-9, warmup_min_iters=n_warmup, warmup_epochs=0.0)
    config = RunConfig(TrainOptions(epochs=10, batch_size=1, img_size=4), hyp)
    trainer = Trainer(model, lambda out, b: (out.sum(), {"loss": out.sum().detach()}), optimizer,
                      [batch] * batches_per_epoch, config, hooks=[RecordGradient()])
    assert (trainer.accumulate, trainer.n_warmup) == (accumulate, n_warmup)
    return trainer, steps


def test_optimizer_steps_on_the_global_batch_counter_across_epochs():
    """3 batches an epoch, 4 per step: a step every 4 batches, each summing 4 batches' gradients,
    the accumulation running on over epoch ends (no short step at an epoch's end)."""
    t, steps = _stepping_trainer(batches_per_epoch=3, accumulate=4, n_warmup=0)
    for epoch in range(4):
        t.train_one_epoch(epoch)
    assert steps == [4.0, 4.0, 4.0]  # after batches 4, 8 and 12 of 12
    assert t.model.weight.grad is None and t.last_opt_step == 11


def test_accumulation_grows_during_warmup_then_holds():
    t, steps = _stepping_trainer(batches_per_epoch=5, accumulate=4, n_warmup=10)
    for epoch in range(4):
        t.train_one_epoch(epoch)
    # per-step batch counts follow accumulation(): 1,1,2 in the first 4 batches, then 2,3,4,...
    assert steps[:3] == [1.0, 1.0, 2.0] and steps[-1] == 4.0
    assert sum(steps) <= 20 and 20 - sum(steps) < 4  # every batch counted once, at most 3 still pending


def test_close_mosaic_never_closes_a_whole_run():
    from engine.train.trainer import mosaic_epochs

    assert mosaic_epochs(300, 10) == 290 and mosaic_epochs(11, 10) == 1 and mosaic_epochs(40, 0) == 40
    assert mosaic_epochs(3, 10) == 3 and mosaic_epochs(10, 10) == 10  # a 3-epoch fine-tune keeps mosaic


def test_patience_stops_after_that_many_epochs_without_improvement():
    """--patience 2 on the real EvalHook: fitness peaks at the first epoch, so epochs 2 and 3 do
    not improve and the run stops after the third of its ten."""
    from types import SimpleNamespace

    from engine.train.hooks import EvalHook

    trainer, _ = _stepping_trainer(batches_per_epoch=2, accumulate=1, n_warmup=0)
    fitness = iter([0.5, 0.4, 0.45, 0.6, 0.7])
    result = lambda: SimpleNamespace(fitness=next(fitness), summary=lambda: {})  # noqa: E731
    hook = EvalHook(lambda model, plots=False, final=False: result(), SimpleNamespace(ema=None), None, patience=2)
    hook.after_train = lambda t: None  # no best.pt to score in this loop
    trainer.hooks.append(hook)
    trainer.fit()
    assert trainer.epoch == 2 and trainer.stop_requested and trainer.best_fitness == 0.5

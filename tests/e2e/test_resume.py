"""Resuming as users expect, through the real builder, trainer, hooks and checkpoints: a resumed run
keeps the hyp it was started with (the file edited since is not read; the weight decay is scaled
once), `--epochs N` extends a finished run with the schedule recomputed, and an early stop by
--patience under --nosave still writes the best epoch's best.pt before the final evaluation."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import yaml

from engine.config import TrainOptions
from engine.train.build import build_trainer
from engine.train.hooks import EvalHook
from engine.train.optim import lr_lambda
from utils.errors import CheckpointError, ConfigError
from utils.io import load_checkpoint

pytestmark = pytest.mark.slow

HYP = {"lr0": 0.004, "weight_decay": 0.001, "nominal_batch": 6, "warmup_epochs": 0.0, "warmup_min_iters": 0,
       "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0, "close_mosaic": 0}


def _options(tmp_path, small_cfg, data, **kw) -> TrainOptions:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(small_cfg("anchor")))
    return TrainOptions(**{"cfg": str(cfg), "data": str(data), "img_size": 64, "workers": 0, "device": "cpu",
                           "project": str(tmp_path / "runs"), "noplots": True, **kw})


def test_a_resumed_run_keeps_its_hyp_and_extends_with_epochs(tmp_path, small_cfg, subset_data, caplog):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump(HYP))
    build_trainer(_options(tmp_path, small_cfg, subset_data(4), hyp=str(hyp), epochs=1, batch_size=4,
                           noval=True)).fit()
    last = tmp_path / "runs/exp/weights/last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    hyp.write_text("lr0: fast\nweight_decay: 0.5\n")  # edited since: a resumed run must not read it

    with pytest.raises(CheckpointError, match=r"training already finished \(1/1 epochs\); to train on, resume with "
                                              r"--epochs N, N > 1"):
        build_trainer(TrainOptions(resume=str(last), workers=0, device="cpu"))
    with pytest.raises(ConfigError, match="--epochs 1: .*last.pt has trained 1 epochs already; give more"):
        build_trainer(TrainOptions(resume=str(last), workers=0, device="cpu", epochs=1))

    with caplog.at_level(logging.INFO, logger="gradpath.train"):
        trainer = build_trainer(TrainOptions(resume=str(last), workers=0, device="cpu", epochs=3))
    assert any("extended from 1 to 3 epochs: LR schedule and mosaic closing recomputed" in r.getMessage()
               for r in caplog.records)
    config = trainer.config
    assert config.hyp.lr0 == HYP["lr0"] and config.hyp.weight_decay == HYP["weight_decay"]
    assert (config.options.epochs, trainer.start_epoch, config.accumulate) == (3, 1, 2)
    groups = trainer.optimizer.param_groups
    assert all(g["initial_lr"] == pytest.approx(HYP["lr0"]) for g in groups)
    # scaled once to 4 images x 2 batches per step of a nominal 6 (twice would be 0.001 x (8/6)^2)
    assert groups[1]["weight_decay"] == pytest.approx(0.001 * 8 / 6)
    schedule = lr_lambda(3, config.hyp.lrf, config.options.lr_schedule)  # the new length's schedule
    assert groups[1]["lr"] == pytest.approx(HYP["lr0"] * schedule(1))
    trainer.fit()
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 2 and ckpt["config"]["args"]["epochs"] == 3 and ckpt["config"]["hyp"]["lr0"] == 0.004
    assert yaml.safe_load((tmp_path / "runs/exp/config.yaml").read_text())["args"]["epochs"] == 3


def test_an_early_stop_under_nosave_writes_the_best_epoch_before_the_final_evaluation(tmp_path, small_cfg,
                                                                                      subset_data):
    """--patience 2 --nosave, the validation scores scripted (0.3, 0.5, 0.4, 0.45): epochs 3 and 4
    do not beat the second, so the run stops after its fourth of six. Nothing is written before
    the end; then last.pt (epoch 4) and best.pt (epoch 2's EMA weights), which the final
    evaluation scores."""
    trainer = build_trainer(_options(tmp_path, small_cfg, subset_data(2), epochs=6, batch_size=2, nosave=True,
                                     patience=2))
    weights = tmp_path / "runs/exp/weights"
    fitness, seen, snapshots, scored = iter([0.3, 0.5, 0.4, 0.45]), [], [], []

    def evaluate(model, plots=False, final=False):
        if final:
            scored.append({k: v.clone() for k, v in model.state_dict().items()})
            return SimpleNamespace(fitness=0.5, summary=lambda: {"metrics/scripted": 0.5}, table=lambda: "table")
        seen.append(sorted(p.name for p in weights.glob("*")) if weights.exists() else [])
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        f = next(fitness)
        return SimpleNamespace(fitness=f, summary=lambda: {"metrics/scripted": f})

    hook = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    hook.evaluate = evaluate
    results = trainer.fit()
    assert trainer.epoch == 3 and trainer.stop_requested and results["fitness"] == 0.5
    assert seen == [[], [], [], []]  # nothing saved before the last epoch
    assert load_checkpoint(weights / "last.pt")["epoch"] == 3
    best = load_checkpoint(weights / "best.pt")
    assert best["epoch"] == 1 and best["best_fitness"] == 0.5
    assert sorted(p.name for p in weights.glob("*.pt")) == ["best.pt", "last.pt"]
    # the final evaluation scored epoch 2's EMA weights (what best.pt holds), not the last epoch's
    assert len(scored) == 1 and all(torch.equal(scored[0][k], v) for k, v in snapshots[1].items())
    assert any(not torch.equal(scored[0][k], v) for k, v in snapshots[3].items())

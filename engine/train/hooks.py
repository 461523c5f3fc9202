"""Training hooks: what runs around the loop's steps without being the loop. Each gets the trainer
at the events it overrides; they run in the order given, so a later hook of the same event sees
what an earlier one wrote into `trainer.epoch_results` (evaluation before logging before saving).
The builder installs the writing hooks on rank 0 only (EvalHook, which writes on rank 0 only,
on every rank). (`trainer` is an engine.train.trainer.Trainer, not imported: the trainer
imports this module.)"""
from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import model_from_checkpoint
from engine.device import elementwise_threads
from engine.train.ema import ModelEMA
from engine.train.results import ResultsLog
from models.summary import stage_label
from utils.dist import broadcast_module, unwrap
from utils.io import FORMAT_VERSION, atomic_copy, atomic_link, load_checkpoint, save_checkpoint
from utils.memory import process_tree_rss
from utils.structures import Batch

LOG = logging.getLogger("gradpath.train")


class Hook:
    """Every event, doing nothing."""

    def before_train(self, trainer) -> None: ...

    def before_epoch(self, trainer) -> None:
        """The model is in train mode (a hook may put parts of it back in eval mode)."""

    def before_step(self, trainer, batch: Batch, i: int) -> None: ...

    def before_optimizer_step(self, trainer) -> None:
        """Gradients unscaled and clipped, not applied yet."""

    def after_optimizer_step(self, trainer) -> None: ...

    def after_epoch(self, trainer) -> None: ...

    def after_train(self, trainer) -> None: ...


class EMAHook(Hook):
    """ema = d * ema + (1 - d) * model after every optimizer step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_optimizer_step(self, trainer) -> None:
        with elementwise_threads(trainer.device):
            self.ema.update(unwrap(trainer.model))


class EvalHook(Hook):
    """Validates the EMA model after every epoch (plots on the last; with `final_only`, YOLOv7's
    --notest, after the last only), keeps the best fitness, stops the run after `patience` epochs
    without improvement, and at the end scores best.pt at full mask resolution and prints the
    COCO tables.

    Under torch.distributed it runs on every rank: each predicts its shard of the validation set
    and rank 0 scores them all. Only rank 0 updates its EMA; the other ranks' `ema` holds the
    same architecture and receives rank 0's weights before each validation (one broadcast per
    epoch; EMAs kept on every rank would drift apart, their BatchNorm statistics being each
    rank's own)."""

    def __init__(self, evaluate, ema: ModelEMA, best: Path, patience: int = 0, final_only: bool = False):
        """evaluate(model, plots=..., final=...) -> EvalResult on rank 0, None on the others."""
        self.evaluate, self.ema, self.best, self.patience = evaluate, ema, best, patience
        self.final_only, self.stale = final_only, 0

    def after_epoch(self, trainer) -> None:
        epoch = trainer.epoch
        last = epoch + 1 == trainer.config.options.epochs
        if self.final_only and not last:  # the same on every rank: no broadcast is left unmatched
            return
        broadcast_module(self.ema.ema, trainer.dist)
        result = self.evaluate(self.ema.ema, plots=last)
        if result is None:  # not rank 0
            return
        fitness = float(result.fitness)
        improved = fitness > trainer.best_fitness
        if improved:
            trainer.best_fitness = fitness
        self.stale = 0 if improved else self.stale + 1
        trainer.epoch_results.update(metrics=result.summary(), fitness=fitness, improved=improved)
        if self.patience and self.stale >= self.patience:
            LOG.info("no improvement for %d epochs: stopping early", self.patience)
            trainer.stop_requested = True

    def after_train(self, trainer) -> None:
        if trainer.dist.is_main:
            model = model_from_checkpoint(load_checkpoint(self.best), self.best).to(trainer.device).eval()
        else:  # best.pt may live on rank 0's machine only: its weights come by broadcast
            model = self.ema.ema
        broadcast_module(model, trainer.dist)
        result = self.evaluate(model, plots=True, final=True)
        if result is None:
            return
        print(result.table())
        trainer.results.update(fitness=float(result.fitness), **result.summary())


class ResultsHook(Hook):
    """One results.csv row and TensorBoard scalars per epoch; results.png at the end."""

    def __init__(self, log: ResultsLog):
        self.log = log

    def after_epoch(self, trainer) -> None:
        r = trainer.epoch_results
        lrs = {f"lr/pg{j}": g["lr"] for j, g in enumerate(trainer.optimizer.param_groups)}
        images = getattr(trainer.loader, "images_per_epoch", len(trainer.loader))
        self.log.epoch(trainer.epoch, {**{f"train/{k}": v for k, v in r["losses"].items()}, **r.get("metrics", {}),
                                       **lrs, "sys/rss_gib": process_tree_rss() / 2**30,
                                       "sys/train_img_s": images / max(trainer.epoch_seconds, 1e-9)})

    def after_train(self, trainer) -> None:
        self.log.close(plot=True)
        trainer.results["save_dir"] = str(self.log.save_dir)


class CheckpointHook(Hook):
    """last.pt every epoch, best.pt when the epoch improved (every epoch without validation),
    epochN.pt every `save_period`. With `nosave` only at the run's last epoch (however it ends):
    last.pt, and best.pt from the best epoch, kept in memory until then (an early stop by
    --patience ends on an epoch that is not the best). `describe` is the static part of every
    checkpoint's config (model cfg, names, the RunConfig)."""

    def __init__(self, weights_dir: Path, ema: ModelEMA, describe: dict[str, Any], nosave: bool = False,
                 save_period: int = -1):
        self.dir, self.ema, self.describe = Path(weights_dir), ema, describe
        self.nosave, self.save_period = nosave, save_period
        self.best: dict[str, Any] | None = None  # with nosave: the best epoch's checkpoint so far

    def after_epoch(self, trainer) -> None:
        epoch = trainer.epoch
        last = epoch + 1 == trainer.config.options.epochs or trainer.stop_requested
        improved = trainer.epoch_results.get("improved", True)
        if self.nosave and not last:
            if improved:
                self.best = self.checkpoint(trainer)
                self.best["optimizer"] = copy.deepcopy(self.best["optimizer"])  # the live state moves on
            return
        ckpt = self.checkpoint(trainer)
        written = save_checkpoint(ckpt, self.dir / "last.pt")
        if improved or self.best is not None or not (self.dir / "best.pt").exists():
            if improved or self.best is None:
                self._copy_of_last(written, self.dir / "best.pt", last)
            else:
                save_checkpoint(self.best, self.dir / "best.pt")
            self.best = None
        if self.save_period > 0 and (epoch + 1) % self.save_period == 0:
            self._copy_of_last(written, self.dir / f"epoch{epoch + 1}.pt", last)

    @staticmethod
    def _copy_of_last(last_pt: Path, path: Path, final: bool) -> None:
        """`path` holding the checkpoint just written to last_pt: during the run a hard link to
        that file (a 4.4M-parameter run's 71 MB checkpoint took 0.4 s to save, as long as its
        training step on 6 images); on the run's last epoch a byte copy of its own, so that no
        link outlives the run (a later in-place write to one file would change the other)."""
        (atomic_copy if final else atomic_link)(last_pt, path)

    def checkpoint(self, trainer) -> dict[str, Any]:
        """A copy (not a view of the live weights: a CPU model's .cpu() is itself)."""
        cpu = lambda m: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}  # noqa: E731
        return {"model": cpu(unwrap(trainer.model)), "ema": cpu(self.ema.ema), "ema_updates": self.ema.updates,
                **trainer.state_dict(), "config": self.describe, "version": FORMAT_VERSION,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class PlotHook(Hook):
    """labels.png before training; the first three training batches as the model sees them, to the
    run folder and TensorBoard."""

    def __init__(self, save_dir: Path, dataset, names: list[str], log: ResultsLog):
        self.save_dir, self.dataset, self.names, self.log = Path(save_dir), dataset, names, log

    def before_train(self, trainer) -> None:
        from data.label_plots import plot_labels

        plot_labels(self.dataset, self.save_dir / "labels.png")

    def before_step(self, trainer, batch: Batch, i: int) -> None:
        if trainer.epoch != trainer.start_epoch or i >= 3:
            return
        from data.label_plots import plot_batch

        grid = plot_batch(batch, self.names, self.save_dir / f"train_batch{i}.jpg")
        self.log.image(f"train_batch{i}", grid[:, :, ::-1].copy(), 0)


class GradNormHook(Hook):
    """Per-stage gradient norms (after unscaling and clipping) every `every` optimizer steps."""

    def __init__(self, every: int, log: ResultsLog):
        self.every, self.log = every, log

    def before_optimizer_step(self, trainer) -> None:
        if trainer.global_step % self.every == 0:
            for name, value in stage_grad_norms(unwrap(trainer.model)).items():
                self.log.scalar(f"grads/{name}", value, trainer.global_step)


def stage_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradients per top-level stage (after backward), plus 'total' and
    'nonfinite' (1.0 when any gradient holds inf/nan). Parameters without .grad are skipped."""
    names, grads = [], []
    for n, p in model.named_parameters():
        if p.grad is not None:
            names.append(stage_label(model, n))
            grads.append(p.grad.detach())
    if not grads:
        return {"total": 0.0, "nonfinite": 0.0}
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).cpu().tolist()
    per_stage: dict[str, list[float]] = defaultdict(list)
    for stage, v in zip(names, norms):
        per_stage[stage].append(v)
    out = {stage: math.hypot(*vs) for stage, vs in per_stage.items()}
    out["total"] = math.hypot(*norms)
    out["nonfinite"] = float(not all(math.isfinite(v) for v in norms))
    return out

"""The training loop, made of small steps: setup, one epoch, validate, checkpoint, finish."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from data.config import load_data_config
from data.loader import build_dataloader
from engine.checkpoint import load_state_dict_checked, read_weights, transfer_weights
from engine.device import (OutOfMemory, amp_precision, compile_model, configure_cuda, is_out_of_memory, memory_format,
                           out_of_memory_message)
from engine.train.ema import ModelEMA
from engine.train.optim import accumulation, build_optimizer, lr_lambda, warmup, warmup_iterations
from engine.config import DEFAULT_CFG, FALLBACK, TrainOptions, saved_options
from engine.train.results import ResultsLog
from models.loss.losses import build_criterion
from models.model import build_model
from utils.io import FORMAT_VERSION, load_checkpoint, save_checkpoint
from utils.errors import CheckpointError
from utils.errors import ConfigError
from engine.config import load_hyp
from utils.io import save_yaml
from utils.dist import DistInfo, all_reduce_max, barrier, cleanup, dist_info_from_env, init_distributed, select_device, unwrap
from utils.memory import process_tree_rss
from utils.paths import new_run_dir, resolve_repo_path
from utils.structures import Batch

LOG = logging.getLogger("gradpath.train")
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops


def seed_everything(seed: int, rank: int) -> None:
    s = seed + max(rank, 0)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class Trainer:
    def __init__(self, opt: TrainOptions):
        self.opt = opt
        self.dist: DistInfo = dist_info_from_env()
        self.device = select_device(opt.device, self.dist)
        init_distributed(self.dist, self.device)
        self.resume_ckpt: dict | None = self._resume_checkpoint() if opt.resume else None
        self.data_cfg = load_data_config(self.opt.data)
        self._apply_data_defaults()
        self.hyp = load_hyp(self.opt.hyp)
        if self.opt.close_mosaic is not None:
            self.hyp["close_mosaic"] = self.opt.close_mosaic
        seed_everything(self.opt.seed, self.dist.rank)
        nc = 1 if self.opt.single_cls else self.data_cfg.nc
        self.init_ckpt = read_weights(self.opt.weights) if self.opt.weights and not self.resume_ckpt else None
        model_cfg = self._model_cfg()
        self.model = build_model(model_cfg, num_classes=nc)  # a bad cfg fails here, before a run folder exists
        self.precision = amp_precision(self.device, self.opt.amp, self.opt.amp_dtype)  # so does --amp bf16 on a V100
        self.memory_format = memory_format(self.device, "train", self.opt.channels_last or None)
        self.save_dir = self._run_dir()
        self.weights_dir = self.save_dir / "weights"

    # ---- setup -------------------------------------------------------------------------
    def _model_cfg(self) -> str | dict:
        """The resumed run's model, else --cfg, else the --weights checkpoint's own, else the default."""
        if self.resume_ckpt:
            return self.resume_ckpt["config"]["model"]
        if not self.opt.cfg and self.init_ckpt and "model" in self.init_ckpt.get("config", {}):
            return self.init_ckpt["config"]["model"]
        return str(resolve_repo_path(self.opt.cfg or DEFAULT_CFG))

    def _resume_checkpoint(self) -> dict:
        path = Path(self.opt.resume) if self.opt.resume not in ("True", "last") else _newest_last(self.opt.project)
        ckpt = load_checkpoint(path)
        saved = ckpt.get("config", {}).get("args")
        if not saved:
            raise CheckpointError(f"{path}: has no saved training arguments to resume from")
        keep = {"device": self.opt.device, "workers": self.opt.workers}
        self.opt = TrainOptions(**{**saved_options(saved), **keep, "resume": str(path),
                                   "exist_ok": True})
        self.opt.project, self.opt.name = str(path.parent.parent.parent), path.parent.parent.name
        if ckpt.get("epoch", -1) + 1 >= self.opt.epochs:
            raise CheckpointError(f"{path}: training already finished ({ckpt['epoch'] + 1}/{self.opt.epochs} epochs); nothing to resume")
        LOG.info("resuming %s from epoch %d", path, ckpt["epoch"] + 1)
        return ckpt

    def _apply_data_defaults(self) -> None:
        defaults = {**FALLBACK, **(getattr(self.data_cfg, "train_defaults", None) or {})}
        for key in FALLBACK:
            if getattr(self.opt, key) is None:
                setattr(self.opt, key, defaults[key])

    def _run_dir(self) -> Path:
        if self.resume_ckpt is not None:
            return Path(self.opt.project) / self.opt.name
        if not self.dist.is_main:
            return Path(self.opt.project) / self.opt.name  # only rank 0 writes
        return new_run_dir(self.opt.project, self.opt.name, self.opt.exist_ok)

    def setup(self) -> None:
        opt, hyp = self.opt, self.hyp
        self.names = ["item"] if opt.single_cls else list(self.data_cfg.names)
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        configure_cuda(self.device, fixed_shapes=not (opt.multi_scale or opt.rect))
        self.stride = int(max(self.model.stride))
        if opt.img_size % self.stride:
            raise ConfigError(f"--img-size {opt.img_size}: must be a multiple of the model stride {self.stride}")
        if self.init_ckpt is not None:
            ckpt, self.init_ckpt = self.init_ckpt, None
            loaded, total, differ = transfer_weights(self.model, ckpt.get("ema") or ckpt["model"])
            LOG.info("transferred %d/%d tensors from %s%s", loaded, total, opt.weights,
                     f" (layers that differ from --cfg: {differ})" if differ else "")
        self.train_loader, self.train_set = self.build_train_loader()
        if self.dist.is_main and not opt.noval:
            self.val_loader, self.val_set = build_dataloader(
                self.data_cfg, "val", opt.img_size, opt.batch_size // max(self.dist.world_size, 1) * 2,
                None, augment=False, rect=True, cache=opt.cache, workers=opt.workers,
                single_cls=opt.single_cls, stride=self.stride, pin_memory=self.device.type == "cuda")
        nbs = hyp["nominal_batch"]
        self.accumulate = max(round(nbs / opt.batch_size), 1)
        hyp["weight_decay"] *= opt.batch_size * self.accumulate / nbs
        self.optimizer = build_optimizer(self.model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
        self.lf = lr_lambda(opt.epochs, hyp["lrf"], opt.lr_schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.scaler = self.precision.grad_scaler()
        self.criterion = build_criterion(hyp, self.model.head.kind, opt.img_size)
        self.ema = ModelEMA(self.model) if self.dist.is_main else None
        self.start_epoch, self.best_fitness = 0, -1.0
        if self.resume_ckpt:
            self._restore(self.resume_ckpt)
        # the loader's keys carry their epoch: where to start, and when mosaic closes
        self.train_loader.batch_sampler.start_epoch = self.start_epoch
        self.train_set.mosaic_epochs = mosaic_epochs(opt.epochs, int(self.hyp["close_mosaic"]))
        compile_model(unwrap(self.model), opt.compile)  # in place, after the EMA's copy
        if self.dist.enabled:
            if opt.sync_bn and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                LOG.info("SyncBatchNorm: %d layers", sum(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules()))
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.norm_stats = NormStats(unwrap(self.model))
        nb = len(self.train_loader)
        self.n_warmup = warmup_iterations(self.hyp, nb)
        self.bad_steps, self.skipped_steps, self.global_step = 0, 0, self.start_epoch * nb
        self.accumulate_now = self.accumulate
        # the optimizer steps on the global batch counter: an accumulation runs on across an epoch's
        # end instead of being cut short there (on a small dataset, most of them would be)
        self.last_opt_step = self.start_epoch * nb - 1
        if self.dist.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.run_config(), self.save_dir / "config.yaml")
            self.log = ResultsLog(self.save_dir, resume=self.resume_ckpt is not None)
            self._plot_labels()

    def build_train_loader(self):
        """(loader, dataset) of the training split. benchmarks/finetune_official_loader.py replaces it
        to train on batches another loader made."""
        opt = self.opt
        return build_dataloader(
            self.data_cfg, "train", opt.img_size, opt.batch_size // max(self.dist.world_size, 1), self.hyp,
            augment=True, rect=opt.rect, cache=opt.cache, workers=opt.workers, shuffle=not opt.rect,
            rank=self.dist.rank, world_size=self.dist.world_size, seed=opt.seed,
            single_cls=opt.single_cls, stride=self.stride, pin_memory=self.device.type == "cuda")

    def _restore(self, ckpt: dict) -> None:
        report = load_state_dict_checked(self.model, ckpt["model"], self.opt.resume)
        if report:
            raise CheckpointError(f"{self.opt.resume}: cannot resume: {report}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            load_state_dict_checked(self.ema.ema, ckpt["ema"], self.opt.resume)
            self.ema.updates = int(ckpt.get("ema_updates", 0))
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_fitness = float(ckpt.get("best_fitness", -1.0))
        self.scheduler.last_epoch = self.start_epoch - 1
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lf(self.start_epoch)

    def run_config(self) -> dict[str, Any]:
        """The one config saved with the run and inside every checkpoint (plain types only)."""
        m = unwrap(self.model)
        return {"model": m.yaml, "nc": m.nc, "names": self.names,
                "category_ids": [int(i) for i in self.data_cfg.category_ids] if not self.opt.single_cls else [1],
                "img_size": self.opt.img_size, "data": str(self.opt.data), "hyp": dict(self.hyp),
                "args": asdict(self.opt)}

    def _plot_labels(self) -> None:
        from data.plots import plot_labels

        plot_labels(self.train_set, self.save_dir / "labels.png")

    def _plot_batch(self, batch: Batch, i: int) -> None:
        """The first training batches as the model sees them: to the run folder and TensorBoard."""
        from data.plots import plot_batch

        grid = plot_batch(batch, self.names, self.save_dir / f"train_batch{i}.jpg")
        self.log.image(f"train_batch{i}", grid[:, :, ::-1].copy(), 0)

    # ---- the loop ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.setup()
        opt = self.opt
        self.optimizer.zero_grad(set_to_none=True)
        results: dict[str, Any] = {}
        t0 = time.time()
        stale = 0
        for epoch in range(self.start_epoch, opt.epochs):
            try:
                t_epoch = time.time()
                losses = self.train_one_epoch(epoch)
                self.epoch_seconds = time.time() - t_epoch
                self.scheduler.step()
                if self.dist.is_main:
                    results = self.end_epoch(epoch, losses)
            except RuntimeError as e:
                if is_out_of_memory(e):
                    raise OutOfMemory(out_of_memory_message(self.device, opt.batch_size, opt.img_size)) from None
                raise
            if self.dist.is_main:  # the other ranks learn of it through the all-reduce below
                stale = 0 if results.get("improved") else stale + 1
            if opt.patience and all_reduce_max(float(stale >= opt.patience), self.dist, self.device):
                LOG.info("no improvement for %d epochs: stopping early", opt.patience)
                break
            barrier(self.dist)
        if self.dist.is_main:
            LOG.info("%d epochs done in %.1f min; %d steps skipped for non-finite loss",
                     opt.epochs - self.start_epoch, (time.time() - t0) / 60, self.skipped_steps)
            results = self.finish()
        cleanup(self.dist)
        return results

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        nb = len(self.train_loader)
        sums: dict[str, float] = {}
        bar = tqdm(self.train_loader, total=nb, disable=not self.dist.is_main, bar_format="{l_bar}{bar:10}{r_bar}",
                   desc=f"{epoch + 1}/{self.opt.epochs}")
        for i, batch in enumerate(bar):
            it = i + nb * epoch
            self.accumulate_now = accumulation(it, self.n_warmup, self.accumulate)
            if self.n_warmup and it <= self.n_warmup:
                warmup(self.optimizer, it, self.n_warmup, self.lf(epoch), self.hyp)
            if self.dist.is_main and epoch == self.start_epoch and i < 3:
                self._plot_batch(batch, i)
            terms = self.train_step(batch, it)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.dist.is_main:
                mean = {k: v / (i + 1) for k, v in sums.items()}
                mem = f"{torch.cuda.memory_reserved(self.device) / 2**30:.1f}G" if self.device.type == "cuda" else "cpu"
                bar.set_postfix_str(" ".join(f"{k}={v:.3f}" for k, v in mean.items())
                                    + f" mem={mem} inst={len(batch.classes)} size={batch.images.shape[-1]}")
        return {k: v / max(nb, 1) for k, v in sums.items()}

    def train_step(self, batch: Batch, it: int) -> dict[str, float]:
        """Forward and backward of one batch (global index `it`); the optimizer steps once
        accumulate_now batches have been summed since its last step."""
        batch = batch.to(self.device, non_blocking=True)
        images = batch.images.float() / 255.0
        if self.opt.multi_scale:
            images, batch = multi_scale(images, batch, self.opt.img_size, self.stride)
        self.norm_stats.save()
        with self.precision.autocast(self.device):
            outputs = self.model(images.contiguous(memory_format=self.memory_format))
        loss, terms = self.criterion(outputs, batch)  # loss in fp32: the head output is upcast inside
        if self.dist.enabled:
            loss = loss * self.dist.world_size
        # every rank must skip together: one rank without a backward would hang DDP's all-reduce
        if all_reduce_max(float(not torch.isfinite(loss)), self.dist, self.device):
            return self._skip_step(terms)
        self.bad_steps = 0
        self.scaler.scale(loss).backward()
        self.global_step += 1
        if it - self.last_opt_step >= self.accumulate_now:
            self._optimizer_step()
            self.last_opt_step = it
        return {k: float(v) for k, v in terms.items()}

    def _skip_step(self, terms: dict) -> dict[str, float]:
        self.bad_steps += 1
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.norm_stats.restore()
        LOG.warning("non-finite loss %s: step skipped (%d in a row)", {k: float(v) for k, v in terms.items()}, self.bad_steps)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise FloatingPointError(f"{MAX_BAD_STEPS} non-finite losses in a row: stopping. Lower --hyp lr0, "
                                     f"check the labels, or disable AMP with --no-amp")
        return {}

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        if self.opt.log_grads and self.dist.is_main and self.global_step % self.opt.log_grads == 0:
            self._log_grads()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(unwrap(self.model))

    def _log_grads(self) -> None:
        from engine.train.hooks import stage_grad_norms

        for name, value in stage_grad_norms(unwrap(self.model)).items():
            self.log.scalar(f"grads/{name}", value, self.global_step)

    # ---- epoch end: validate, log, checkpoint -------------------------------------------
    def end_epoch(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        fitness = -1.0
        final = epoch + 1 == self.opt.epochs
        if not self.opt.noval:
            result = self.validate(self.ema.ema, plots=final)
            metrics, fitness = result.summary(), float(result.fitness)
        lrs = {f"lr/pg{j}": g["lr"] for j, g in enumerate(self.optimizer.param_groups)}
        images = self.train_loader.batch_sampler.per_rank * max(self.dist.world_size, 1)
        self.log.epoch(epoch, {**{f"train/{k}": v for k, v in losses.items()}, **metrics, **lrs,
                               "sys/rss_gib": process_tree_rss() / 2**30,
                               "sys/train_img_s": images / max(self.epoch_seconds, 1e-9)})
        improved = fitness > self.best_fitness or self.opt.noval  # without validation the newest is best
        if improved:
            self.best_fitness = fitness
        if not self.opt.nosave or final:
            self.save(epoch, improved)
        return {"epoch": epoch, "fitness": fitness, "improved": improved, **metrics}

    def validate(self, model: nn.Module, plots: bool = False, save_json: bool = False, verbose: bool = False):
        from engine.eval.evaluator import evaluate

        return evaluate(model, self.val_loader, self.val_set, self.device, half=self.precision.amp, save_dir=self.save_dir,
                        save_json=save_json, plots=plots, verbose=verbose)

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
                "ema": {k: v.detach().cpu() for k, v in self.ema.ema.state_dict().items()},
                "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "best_fitness": self.best_fitness,
                "config": self.run_config(), "version": FORMAT_VERSION,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save(self, epoch: int, improved: bool) -> None:
        ckpt = self.checkpoint(epoch)
        save_checkpoint(ckpt, self.weights_dir / "last.pt")
        if improved or not (self.weights_dir / "best.pt").exists():
            save_checkpoint(ckpt, self.weights_dir / "best.pt")
        if self.opt.save_period > 0 and (epoch + 1) % self.opt.save_period == 0:
            save_checkpoint(ckpt, self.weights_dir / f"epoch{epoch + 1}.pt")

    def finish(self) -> dict[str, Any]:
        """Final evaluation of best.pt at full mask resolution; prints the COCO tables."""
        self.log.close(plot=True)
        if self.opt.noval:
            return {"save_dir": str(self.save_dir)}
        from engine.checkpoint import model_from_checkpoint
        from engine.eval.evaluator import evaluate

        best = self.weights_dir / "best.pt"
        model = model_from_checkpoint(load_checkpoint(best), best).to(self.device).eval()
        result = evaluate(model, self.val_loader, self.val_set, self.device, save_dir=self.save_dir,
                          save_json=True, plots=True, verbose=True, retina_masks=True)
        print(result.table())
        print(f"Results saved to {self.save_dir}")
        return {"save_dir": str(self.save_dir), "fitness": float(result.fitness), **result.summary()}


def mosaic_epochs(epochs: int, close_mosaic: int) -> int:
    """How many epochs (from the first) train with mosaic: all but the last close_mosaic, when that
    leaves any. A run no longer than close_mosaic (a short fine-tune under the default 10) keeps
    mosaic throughout, as the recipe's `mosaic` asks and as a run of the official YOLOv5/YOLOv7
    code (which never closes it) would; closing it would train the whole run without it."""
    return epochs - close_mosaic if 0 < close_mosaic < epochs else epochs


def multi_scale(images: torch.Tensor, batch: Batch, img_size: int, stride: int) -> tuple[torch.Tensor, Batch]:
    """Resize the whole batch to a random size in [0.5, 1.5] x img_size (a multiple of stride)."""
    size = int(random.uniform(img_size * 0.5, img_size * 1.5 + stride)) // stride * stride
    size = max(size, stride)
    h, w = images.shape[-2:]
    factor = size / max(h, w)
    if factor == 1:
        return images, batch
    new_hw = [max(stride, math.ceil(x * factor / stride) * stride) for x in (h, w)]
    images = nn.functional.interpolate(images, size=new_hw, mode="bilinear", align_corners=False)
    sy, sx = new_hw[0] / h, new_hw[1] / w
    boxes = batch.boxes * batch.boxes.new_tensor([sx, sy, sx, sy])
    masks = batch.masks
    if masks.numel():
        masks = nn.functional.interpolate(masks[None].float(), size=(new_hw[0] // 4, new_hw[1] // 4),
                                          mode="nearest")[0].to(batch.masks.dtype)
    else:
        masks = masks.new_zeros((0, new_hw[0] // 4, new_hw[1] // 4))
    return images, Batch(batch.images, batch.batch_idx, batch.classes, boxes, masks, batch.image_ids,
                         batch.paths, batch.orig_shapes, batch.ratio_pads)


class NormStats:
    """The BatchNorm running statistics, saved before every forward. A step skipped for a
    non-finite loss restores them: the overflowing batch (float16 activations under AMP) would
    otherwise leave inf/NaN in running_mean/var for good, and every later evaluation with them."""

    def __init__(self, model: nn.Module):
        self.live = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                     for b in m.buffers(recurse=False)]
        self.saved = [b.clone() for b in self.live]

    def save(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)  # one fused copy, not one per buffer

    def restore(self) -> None:
        if self.live:
            torch._foreach_copy_(self.live, self.saved)


def _newest_last(project: str) -> Path:
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"--resume: no {project}/*/weights/last.pt to resume from")
    return candidates[-1]

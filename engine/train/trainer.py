"""The training loop and its steps. A Trainer is built from a model, a criterion, an optimizer, a
loader and the run's config (engine/train/build.py does the building for train.py); everything
around the steps (EMA, evaluation, checkpoints, logging, plots, gradient norms) is a hook."""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from engine.config import RunConfig
from engine.device import OutOfMemory, Precision, is_out_of_memory, out_of_memory_message
from engine.train.hooks import Hook
from engine.train.optim import accumulation, lr_lambda, warmup, warmup_iterations
from utils.dist import DistInfo, all_reduce_max, barrier, unwrap
from utils.structures import Batch

LOG = logging.getLogger("gradpath.train")
MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run stops


class Trainer:
    """model(images) -> head outputs; criterion(outputs, batch) -> (loss, named terms); the
    optimizer steps once `accumulate` batches (fewer during the warmup) have been summed, on the
    global batch counter. `loader` yields Batches, len() batches per epoch."""

    def __init__(self, model: nn.Module, criterion, optimizer: torch.optim.Optimizer, loader: Iterable[Batch],
                 config: RunConfig, *, device: torch.device = torch.device("cpu"), dist: DistInfo = DistInfo(),
                 precision: Precision = Precision(), memory_format: torch.memory_format = torch.contiguous_format,
                 hooks: Sequence[Hook] = (), stride: int = 32):
        self.model, self.criterion, self.optimizer, self.loader = model, criterion, optimizer, loader
        self.config, self.device, self.dist, self.precision = config, device, dist, precision
        self.memory_format, self.hooks, self.stride = memory_format, list(hooks), stride
        opt, hyp = config.options, config.hyp
        self.lf = lr_lambda(opt.epochs, hyp.lrf, opt.lr_schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=self.lf)
        self.scaler = precision.grad_scaler()
        self.accumulate, self.n_warmup = config.accumulate, warmup_iterations(hyp, len(loader))
        self.accumulate_now = self.accumulate
        self.norm_stats = NormStats(unwrap(model))
        self.best_fitness, self.stop_requested = -1.0, False
        self.bad_steps = self.skipped_steps = 0
        self.epoch_results: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self._start(0)

    def _start(self, epoch: int) -> None:
        """Counters for a run that begins at `epoch`: the optimizer steps on the global batch
        counter, so an accumulation runs on across epoch ends instead of being cut short there."""
        nb = len(self.loader)
        self.start_epoch = self.epoch = epoch
        self.global_step, self.last_opt_step = epoch * nb, epoch * nb - 1
        self.scheduler.last_epoch = epoch - 1
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lf(epoch)

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What resuming needs of the loop itself (the model and EMA weights are saved beside it)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "best_fitness": self.best_fitness}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the saved epoch."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_fitness = float(state.get("best_fitness", -1.0))
        self._start(int(state["epoch"]) + 1)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        opt = self.config.options
        self._call("before_train")
        self.optimizer.zero_grad(set_to_none=True)
        t0, ran = time.time(), 0
        for epoch in range(self.start_epoch, opt.epochs):
            self.epoch, ran = epoch, ran + 1
            try:
                t_epoch = time.time()
                losses = self.train_one_epoch(epoch)
                self.epoch_seconds = time.time() - t_epoch
                self.scheduler.step()
                self.epoch_results = {"epoch": epoch, "losses": losses}
                self._call("after_epoch")
            except RuntimeError as e:
                if is_out_of_memory(e):
                    raise OutOfMemory(out_of_memory_message(self.device, opt.batch_size, opt.img_size)) from None
                raise
            # every rank must leave the loop together (a hook on rank 0 decides, e.g. patience)
            if all_reduce_max(float(self.stop_requested), self.dist, self.device):
                self.stop_requested = True
                break
            barrier(self.dist)
        LOG.info("%d epochs done in %.1f min; %d steps skipped for non-finite loss",
                 ran, (time.time() - t0) / 60, self.skipped_steps)
        self._call("after_train")
        return self.results

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self._call("before_epoch")
        nb = len(self.loader)
        sums: dict[str, float] = {}
        bar = tqdm(self.loader, total=nb, disable=not self.dist.is_main, bar_format="{l_bar}{bar:10}{r_bar}",
                   desc=f"{epoch + 1}/{self.config.options.epochs}")
        for i, batch in enumerate(bar):
            it = i + nb * epoch
            self.accumulate_now = accumulation(it, self.n_warmup, self.accumulate)
            if self.n_warmup and it <= self.n_warmup:
                warmup(self.optimizer, it, self.n_warmup, self.lf(epoch), self.config.hyp)
            self._call("before_step", batch, i)
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
        if self.config.options.multi_scale:
            images, batch = multi_scale(images, batch, self.config.options.img_size, self.stride)
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
        self._call("before_optimizer_step")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._call("after_optimizer_step")


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

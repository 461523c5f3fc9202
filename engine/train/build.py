"""From train.py's options to a ready Trainer: the run config (resolved, or read back from the
checkpoint on --resume), device and torch.distributed, data, model and weights, the run folder,
the optimizer, the criterion and the hooks. Everything a user can get wrong is checked before
the run folder is made."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.config import DataConfig, load_data_config
from data.loader import build_dataloader
from engine.checkpoint import load_state_dict_checked, read_weights
from engine.class_carryover import transfer_with_classes
from engine.config import DEFAULT_CFG, RunConfig, TrainOptions
from engine.device import amp_precision, compile_model, configure_cuda, memory_format, reuse_freed_memory
from engine.train.ema import ModelEMA
from engine.train.freeze import FreezeHook, freeze, frozen_layers, frozen_norms
from engine.train.hooks import CheckpointHook, EMAHook, EvalHook, GradNormHook, Hook, PlotHook, ResultsHook
from engine.train.optim import build_optimizer
from engine.train.results import ResultsLog
from engine.train.trainer import Trainer, mosaic_epochs
from models.loss.losses import build_criterion
from models.model import Model, build_model
from utils.dist import DistInfo, dist_info_from_env, init_distributed, select_device, unwrap
from utils.cli_args import round_to_stride
from utils.errors import CheckpointError, ConfigError
from utils.io import load_checkpoint, save_yaml
from utils.paths import new_run_dir, newest, resolve_repo_path

LOG = logging.getLogger("gradpath.train")


@dataclass
class Resume:
    """The checkpoint a run continues from, and where it lives."""

    path: Path
    ckpt: dict[str, Any]


def run_config(opt: TrainOptions) -> tuple[RunConfig, DataConfig, Resume | None]:
    """The run's config: read back from the checkpoint on --resume (only --device, --workers and a
    longer --epochs come from this command line), else resolved from the options and the data
    YAML's defaults."""
    opt.check()
    if not opt.resume:
        data_cfg = load_data_config(opt.data)
        return RunConfig.resolve(opt, data_cfg.train_defaults), data_cfg, None
    path = Path(opt.resume) if opt.resume not in ("True", "last") else newest(
        "*/weights/last.pt", opt.project, required_by="--resume")
    ckpt = load_checkpoint(path)
    saved = RunConfig.from_saved(ckpt.get("config") or {}, str(path), int(ckpt.get("version", 1)))
    done = int(ckpt.get("epoch", -1)) + 1
    options = saved.options.replace(device=opt.device, workers=opt.workers, resume=str(path), exist_ok=True,
                                    project=str(path.parent.parent.parent), name=path.parent.parent.name,
                                    epochs=_resumed_epochs(path, done, saved.options.epochs, opt.epochs))
    LOG.info("resuming %s from epoch %d of %d", path, done + 1, options.epochs)
    return RunConfig(options, saved.hyp), load_data_config(options.data), Resume(path, ckpt)


def _resumed_epochs(path: Path, done: int, planned: int, asked: int | None) -> int:
    """The resumed run's length: the saved one, or --epochs N to extend (or shorten) it, as long as
    epochs are left to train."""
    epochs = planned if asked is None else asked
    if done >= epochs:
        if asked is None:
            raise CheckpointError(f"{path}: training already finished ({done}/{planned} epochs); to train on, "
                                  f"resume with --epochs N, N > {done}")
        raise ConfigError(f"--epochs {asked}: {path} has trained {done} epochs already; give more to extend it")
    if epochs != planned:
        LOG.info("%s: %s from %d to %d epochs: LR schedule and mosaic closing recomputed for %d epochs", path,
                 "extended" if epochs > planned else "shortened", planned, epochs, epochs)
    return epochs


def seed_everything(seed: int, rank: int) -> None:
    s = seed + max(rank, 0)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def build_trainer(opt: TrainOptions, train_loader=None) -> Trainer:
    """A Trainer ready to fit(). `train_loader` replaces the data YAML's training loader
    (benchmarks/finetune_official_loader.py trains on batches another loader made)."""
    dist = dist_info_from_env()
    device = select_device(opt.device, dist)
    if reuse_freed_memory(device):
        LOG.debug("CPU training: freed memory kept for reuse (engine.device.reuse_freed_memory)")
    init_distributed(dist, device)
    config, data_cfg, resume = run_config(opt)
    opt, hyp = config.options, config.hyp
    seed_everything(opt.seed, dist.rank)
    init = read_weights(opt.weights) if opt.weights and resume is None else None
    model = build_model(_model_cfg(opt, init, resume), num_classes=1 if opt.single_cls else data_cfg.nc)
    precision = amp_precision(device, opt.amp, opt.amp_dtype)  # --amp bf16 on a V100 fails here
    fmt = memory_format(device, "train", opt.channels_last or None)
    stride = int(max(model.stride))
    opt = _sizes_at_stride(opt, stride)
    config = RunConfig(opt, hyp)
    frozen = freeze(model, frozen_layers(opt.freeze, model))
    if train_loader is None:
        train_loader, train_set = build_dataloader(
            data_cfg, "train", opt.img_size, opt.batch_size // max(dist.world_size, 1), hyp.aug, rect=opt.rect,
            cache=opt.cache, workers=opt.workers, shuffle=not opt.rect, rank=dist.rank, world_size=dist.world_size,
            seed=opt.seed, single_cls=opt.single_cls, stride=stride, pin_memory=device.type == "cuda")
        start = int(resume.ckpt["epoch"]) + 1 if resume else 0
        train_loader.start_at(start)  # the loader's keys carry their epoch: where to start, when mosaic closes
        train_loader.set_mosaic_epochs(mosaic_epochs(opt.epochs, hyp.close_mosaic))
    else:
        train_set = getattr(train_loader, "dataset", None)
    val = None if opt.noval else _val_loader(data_cfg, opt, dist, device, stride)  # every rank validates a shard
    save_dir = _run_dir(opt, dist, resume)  # the first thing written: every check above has passed
    model = model.to(device, memory_format=fmt)
    configure_cuda(device, fixed_shapes=not (opt.multi_scale or opt.rect))
    if init is not None:
        _transfer(model, init, opt, data_cfg)
    if frozen.layers:
        LOG.info("%s", frozen.describe(len(model.layers)))
    optimizer = build_optimizer(model, opt.optimizer, hyp.lr0, hyp.momentum, config.effective_weight_decay)
    criterion = build_criterion(hyp.loss, model.head.kind, opt.img_size)
    ema = ModelEMA(model)  # updated on rank 0; the other ranks' copy receives its weights to validate
    ema.skip = frozenset(frozen.params)  # unchanged: copied, not averaged (exact)
    if resume:
        _restore_weights(model, ema, resume)
    compile_model(model, opt.compile)  # in place, after the EMA's copy
    wrapped = _distributed(model, opt, dist, device)
    names = ["item"] if opt.single_cls else list(data_cfg.names)
    describe = _describe(model, config, data_cfg, names)
    hooks = _hooks(config, val, ema, save_dir, train_set, names, describe, device, precision, resume, dist)
    if frozen.layers:  # every rank: each keeps its own frozen BatchNorm layers in eval mode
        hooks.insert(0, FreezeHook(frozen_norms(unwrap(wrapped), frozen.layers)))
    trainer = Trainer(wrapped, criterion, optimizer, train_loader, config, device=device, dist=dist,
                      precision=precision, memory_format=fmt, hooks=hooks, stride=stride)
    if resume:
        trainer.load_state_dict(resume.ckpt)
    if dist.is_main:
        save_yaml(describe, save_dir / "config.yaml")
    return trainer


def _sizes_at_stride(opt: TrainOptions, stride: int) -> TrainOptions:
    """--img-size (and a validation size) rounded up to the stride, as val.py, detect.py and
    export.py round theirs."""
    val = opt.val_img_size
    return opt.replace(img_size=round_to_stride(opt.img_size, stride),
                       val_img_size=None if val is None else round_to_stride(val, stride, "--img-size (validation)"))


def _transfer(model: Model, init: dict, opt: TrainOptions, data_cfg: DataConfig) -> None:
    """--weights into the model: matching tensors whole, the head's rows by class name."""
    names = ["item"] if opt.single_cls else list(data_cfg.names)
    old_names = (init.get("config") or {}).get("names")
    t = transfer_with_classes(model, init.get("ema") or init["model"], old_names, names, opt.class_carryover)
    LOG.info("transferred %d/%d tensors from %s%s", t.loaded, t.total, opt.weights,
             f" (layers that differ from --cfg: {t.differ})" if t.differ else "")
    if t.describe():
        LOG.info("%s", t.describe())


def _model_cfg(opt: TrainOptions, init: dict | None, resume: Resume | None) -> str | dict:
    """The resumed run's model, else --cfg, else the --weights checkpoint's own, else the default."""
    if resume:
        return resume.ckpt["config"]["model"]
    if not opt.cfg and init and "model" in init.get("config", {}):
        return init["config"]["model"]
    return str(resolve_repo_path(opt.cfg or DEFAULT_CFG))


def _run_dir(opt: TrainOptions, dist: DistInfo, resume: Resume | None) -> Path:
    if resume is not None or not dist.is_main:  # only rank 0 makes folders
        return Path(opt.project) / opt.name
    return new_run_dir(opt.project, opt.name, opt.exist_ok)


def _restore_weights(model: nn.Module, ema: ModelEMA | None, resume: Resume) -> None:
    report = load_state_dict_checked(model, resume.ckpt["model"], resume.path)
    if report:
        raise CheckpointError(f"{resume.path}: cannot resume: {report}")
    if ema is not None and resume.ckpt.get("ema"):
        load_state_dict_checked(ema.ema, resume.ckpt["ema"], resume.path)
        ema.updates = int(resume.ckpt.get("ema_updates", 0))


def _distributed(model: nn.Module, opt: TrainOptions, dist: DistInfo, device: torch.device) -> nn.Module:
    if not dist.enabled:
        return model
    if opt.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        LOG.info("SyncBatchNorm: %d layers", sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()))
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _describe(model: Model, config: RunConfig, data_cfg: DataConfig, names: list[str]) -> dict[str, Any]:
    """The config saved as config.yaml and inside every checkpoint (plain types only): what
    rebuilds the model and what inference needs, then the RunConfig."""
    m = unwrap(model)
    single = config.options.single_cls
    return {"model": m.yaml, "nc": m.nc, "names": names,
            "category_ids": [1] if single else [int(i) for i in data_cfg.category_ids],
            "img_size": config.options.img_size, "data": str(config.options.data), **config.to_dict()}


def _hooks(config: RunConfig, val, ema: ModelEMA, save_dir: Path, train_set, names: list[str], describe: dict,
           device: torch.device, precision, resume: Resume | None, dist: DistInfo) -> list[Hook]:
    """The hooks, in the order they must run at each epoch's end: evaluate, log, save. Rank 0 gets
    them all; the other ranks only the evaluation (each validates a shard)."""
    opt = config.options
    evaluation = [] if opt.noval else [EvalHook(_evaluator(val, save_dir, device, precision, dist), ema,
                                                save_dir / "weights" / "best.pt", opt.patience,
                                                final_only=opt.notest)]
    if not dist.is_main:
        return evaluation
    log = ResultsLog(save_dir, resume=resume is not None)
    hooks: list[Hook] = [EMAHook(ema), *evaluation]
    hooks += [ResultsHook(log), CheckpointHook(save_dir / "weights", ema, describe, opt.nosave, opt.save_period)]
    if not opt.noplots:
        hooks.append(PlotHook(save_dir, train_set, names, log))
    if opt.log_grads:
        hooks.append(GradNormHook(opt.log_grads, log))
    return hooks


def _val_loader(data_cfg: DataConfig, opt: TrainOptions, dist: DistInfo, device: torch.device, stride: int):
    """(loader, dataset) of this rank's shard of the val split, rectangular batches twice the
    training batch per rank."""
    return build_dataloader(data_cfg, "val", opt.val_img_size or opt.img_size,
                            opt.batch_size // max(dist.world_size, 1) * 2, None, rect=True, cache=opt.cache,
                            workers=opt.workers, rank=dist.rank, world_size=dist.world_size,
                            single_cls=opt.single_cls, stride=stride,
                            pin_memory=device.type == "cuda")


def _evaluator(val, save_dir: Path, device: torch.device, precision, dist: DistInfo):
    """evaluate(model, plots, final) over the val split: each epoch in the training precision, the
    final one of best.pt in float32 with full-resolution masks, its predictions saved."""
    from engine.eval.evaluator import evaluate

    loader, dataset = val

    def run(model: nn.Module, plots: bool = False, final: bool = False):
        return evaluate(model, loader, dataset, device, half=precision.amp and not final, save_dir=save_dir,
                        save_json=final, plots=plots, verbose=final, retina_masks=final, dist=dist)

    return run


def train(opt: TrainOptions) -> dict[str, Any]:
    """train.py's whole run."""
    from utils.dist import cleanup

    trainer = build_trainer(opt)
    try:
        results = trainer.fit()
    finally:
        cleanup(trainer.dist)
    if trainer.dist.is_main and "save_dir" in results:
        print(f"Results saved to {results['save_dir']}")
    return results

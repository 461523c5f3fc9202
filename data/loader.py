"""The dataset object the loaders draw from, batch collation and build_dataloader()."""
from __future__ import annotations

import functools
import itertools
import logging
import random
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.augment import (AugmentParams, Tile, apply_ratio_pad, augment_hsv, build_photometric, copy_paste, flip,
                          letterbox, min_area_ratio, mixup, mosaic4, random_perspective, rasterize)
from data.config import DataConfig
from data.datasets import disk_cache_dir, ground_truth_json, load_index
from data.images import ImageReader, UnreadableImage
from data.label_index import LabelIndex
from utils.errors import ConfigError
from utils.structures import Batch, Sample

LOG = logging.getLogger("gradpath.data")


class DetectionDataset(Dataset):
    """Samples of one split: training (`aug` given) with mosaic/perspective/HSV/flips/mixup/
    copy-paste, or letterboxed (optionally rectangular-batched) validation images."""

    def __init__(self, index: LabelIndex, img_size: int, aug: AugmentParams | None, rect: bool,
                 batch_size: int, stride: int, names: list[str], category_ids: list[int], ann_file: Path,
                 single_cls: bool = False, cache: str | None = None, cache_dir: Path | None = None):
        self.index, self.img_size, self.aug, self.augment = index, img_size, aug, aug is not None
        self.names, self.category_ids, self.ann_file = names, category_ids, ann_file
        self.single_cls, self.stride = single_cls, stride
        self.mosaic = self.augment and not rect and aug.mosaic > 0  # rect batches are not square
        self.mosaic_epochs: int | None = None  # epochs (from 0) that use mosaic; None: all
        self.photometric = build_photometric(aug.albumentations) if self.augment else None
        self.min_area_ratio = min_area_ratio(index.has_polygons())
        self.order = np.arange(len(index))
        self.batch_shapes = None
        if rect:  # validation pads by half a stride, as the official evaluators do
            self._rect_batches(batch_size, 0.0 if self.augment else 0.5)
        self.images = ImageReader(index.files, index.shapes, img_size, self.augment, cache, cache_dir)

    @property
    def summary(self) -> str:
        return self.index.summary()

    def __len__(self) -> int:
        return len(self.index)

    def _rect_batches(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio; each batch gets the smallest stride-multiple shape that fits it,
        plus `pad` strides (rounded up to a stride multiple)."""
        ar = self.index.shapes[:, 0] / self.index.shapes[:, 1]
        self.order = np.argsort(ar)
        ar = ar[self.order]
        nb = int(np.ceil(len(ar) / batch_size))
        self.batch_shapes = np.zeros((len(ar), 2), np.int64)
        for b in range(nb):
            sl = ar[b * batch_size:(b + 1) * batch_size]
            lo, hi = sl.min(), sl.max()
            shape = [hi, 1] if hi < 1 else ([1, 1 / lo] if lo > 1 else [1, 1])
            self.batch_shapes[b * batch_size:(b + 1) * batch_size] = \
                np.ceil(np.array(shape) * self.img_size / self.stride + pad).astype(int) * self.stride

    def load_sample(self, i: int) -> Sample:
        """Image i resized to img_size on its long side, labels scaled to match."""
        img = self.images[i]
        h0, w0 = (int(v) for v in self.index.shapes[i])
        boxes, classes, segs = self.index.instances(i)
        if self.single_cls:
            classes = np.zeros_like(classes)
        # the index's arrays are shared by every sample: apply_ratio_pad makes the copies
        s = Sample(img, boxes, classes, segs, int(self.index.image_ids[i]),
                   str(self.index.files[i]), (h0, w0))
        sx, sy = img.shape[1] / w0, img.shape[0] / h0
        return apply_ratio_pad(s, img, ((sx, sy), (0.0, 0.0)))

    # ---- samples --------------------------------------------------------------------------
    def __getitem__(self, key: int | tuple[int, int]):
        """key: a position, or (position, epoch) from EpochBatchSampler."""
        k, epoch = key if isinstance(key, tuple) else (key, 0)
        i = int(self.order[k])
        shape = tuple(int(v) for v in self.batch_shapes[k]) if self.batch_shapes is not None \
            else (self.img_size, self.img_size)
        if self.augment:
            sample = self._train_sample_or_another(i, epoch, shape)
        else:
            s = self.load_sample(i)
            img, rp = letterbox(s.image, shape, scaleup=False)
            sample = apply_ratio_pad(s, img, rp)
        return to_tensors(sample)

    def _train_sample_or_another(self, i: int, epoch: int, shape: tuple[int, int], tries: int = 10) -> Sample:
        """A training sample; when an image has become unreadable since indexing, one built from
        another image, with a warning (validation raises instead: its scores would be wrong)."""
        for _ in range(tries - 1):
            try:
                return self._train_sample(i, epoch, shape)
            except UnreadableImage as e:
                LOG.warning("%s; training on another image instead", e)
                i = random.randrange(len(self))
        return self._train_sample(i, epoch, shape)

    def _train_sample(self, i: int, epoch: int, shape: tuple[int, int]) -> Sample:
        """Mosaic (square img_size) or one image letterboxed to `shape` (its rectangular batch's
        shape with --rect), then the perspective, copy-paste, photometric ops and flips."""
        aug = self.aug
        mosaic = self.mosaic and (self.mosaic_epochs is None or epoch < self.mosaic_epochs)
        if mosaic and random.random() < aug.mosaic:
            sample = self._mosaic(i)
            if random.random() < aug.mixup:
                sample = mixup(sample, self._mosaic(random.randrange(len(self))))
        else:
            s = self.load_sample(i)
            img, rp = letterbox(s.image, shape)
            sample = random_perspective(apply_ratio_pad(s, img, rp), shape, aug.degrees, aug.translate,
                                        aug.scale, aug.shear, aug.perspective, self.min_area_ratio)
        sample = copy_paste(sample, aug.copy_paste) if random.random() < 0.5 else sample
        img = sample.image if self.photometric is None else self.photometric(sample.image)
        img = augment_hsv(img, aug.hsv_h, aug.hsv_s, aug.hsv_v)
        sample = Sample(img, sample.boxes, sample.classes, sample.segments, sample.image_id, sample.path,
                        sample.orig_shape, sample.ratio_pad)
        if random.random() < aug.fliplr:
            sample = flip(sample, horizontal=True)
        if random.random() < aug.flipud:
            sample = flip(sample, horizontal=False)
        return sample

    def _mosaic(self, i: int) -> Sample:
        ids = [i] + [random.randrange(len(self)) for _ in range(3)]
        tiles = [Tile(self.images.shape(j), functools.partial(self.load_sample, j)) for j in ids]
        return mosaic4(tiles, self.img_size, self.aug, self.min_area_ratio)


def to_tensors(s: Sample) -> dict:
    """A sample as tensors: the image CHW RGB (cv2.split is ~5x faster than a strided permute),
    labels, masks at 1/4 and metadata."""
    masks = rasterize(s.segments, s.image.shape[:2])
    return {"image": torch.from_numpy(np.stack(cv2.split(s.image)[::-1])), "boxes": torch.from_numpy(s.boxes.reshape(-1, 4).astype(np.float32)),
            "classes": torch.from_numpy(s.classes.astype(np.int64)), "masks": torch.from_numpy(masks),
            "image_id": s.image_id, "path": s.path, "orig_shape": s.orig_shape, "ratio_pad": s.ratio_pad}


def collate(items: list[dict]) -> Batch:
    """Pad images to the largest in the batch (rect batches share a shape already) and concatenate labels."""
    h = max(it["image"].shape[1] for it in items)
    w = max(it["image"].shape[2] for it in items)
    if all(it["image"].shape[1:] == (h, w) for it in items):
        images = _shared_empty((len(items), 3, h, w), torch.uint8)
        torch.stack([it["image"] for it in items], out=images)  # training and rect batches: no padding
    else:
        images = torch.full((len(items), 3, h, w), 114, dtype=torch.uint8)
        for b, it in enumerate(items):
            images[b, :, :it["image"].shape[1], :it["image"].shape[2]] = it["image"]
    masks = torch.zeros((sum(len(it["classes"]) for it in items), h // 4, w // 4), dtype=torch.uint8)
    n = 0
    for it in items:
        m = it["masks"]
        masks[n:n + len(m), :m.shape[1], :m.shape[2]] = m
        n += len(m)
    batch_idx = torch.cat([torch.full((len(it["classes"]),), b, dtype=torch.int64) for b, it in enumerate(items)])
    return Batch(images, batch_idx, torch.cat([it["classes"] for it in items]),
                 torch.cat([it["boxes"] for it in items]).reshape(-1, 4), masks,
                 [it["image_id"] for it in items], [it["path"] for it in items],
                 [it["orig_shape"] for it in items], [it["ratio_pad"] for it in items])


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor that, inside a DataLoader worker, already lives in shared memory, so
    sending the batch to the main process does not copy it there (as default_collate does)."""
    if torch.utils.data.get_worker_info() is None or not np.prod(shape):
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataset(data_cfg: DataConfig, split: str, img_size: int, batch_size: int, aug: AugmentParams | None = None,
                  rect: bool = False, cache: str | None = None, single_cls: bool = False,
                  stride: int = 32) -> DetectionDataset:
    """Training samples when `aug` is given, else validation ones."""
    index = load_index(data_cfg, split)
    if len(index) == 0:
        raise ConfigError(f"{data_cfg.source}: '{split}' has no usable images ({index.summary()})")
    ann_file = ground_truth_json(data_cfg, split, index)
    cache_dir = disk_cache_dir(data_cfg, split) if cache == "disk" else None
    return DetectionDataset(index, img_size, aug, rect, batch_size, stride, data_cfg.names,
                            data_cfg.category_ids, ann_file, single_cls, cache, cache_dir)


class EpochBatchSampler:
    """Batches of (position, epoch) keys, epoch after epoch without end.

    The DataLoader's workers therefore run on into the next epoch instead of draining at every
    epoch's end (on a 128-image set that left a worker idle ~10% of the time), and every key
    carries its epoch, so persistent workers know e.g. that mosaic has closed without any state
    being sent to them. The order is shuffled by (seed, epoch), the same on every rank; each
    rank takes every world_size-th position of the order padded to a multiple of world_size,
    as DistributedSampler does.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = -1, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.start_epoch = 0  # set before the first iteration when resuming

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.per_rank // self.batch_size)

    @property
    def per_rank(self) -> int:
        return -(-self.n // self.world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).numpy()
        else:
            order = np.arange(self.n)
        order = np.resize(order, self.per_rank * self.world_size)  # pads by repeating the start
        return order[self.rank::self.world_size]

    def __iter__(self):
        for epoch in itertools.count(self.start_epoch):
            order = self.epoch_order(epoch)
            for b in range(0, len(order), self.batch_size):
                yield [(int(k), epoch) for k in order[b:b + self.batch_size]]


class EpochLoader:
    """A DataLoader over an EpochBatchSampler, iterated one epoch at a time: len() is batches per
    epoch and every iter() continues the same underlying iterator, so its workers never stop.

    What a trainer sets before the first epoch: `start_at(epoch)` (resuming) and
    `set_mosaic_epochs(n)` (mosaic closes from epoch n on); both reach the workers through the
    epoch every key carries."""

    def __init__(self, loader: DataLoader):
        self.loader, self.batch_sampler, self.dataset = loader, loader.batch_sampler, loader.dataset
        self._it = None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    @property
    def images_per_epoch(self) -> int:
        """Images one epoch draws over all ranks (the padding DistributedSampler-style included)."""
        return self.batch_sampler.per_rank * self.batch_sampler.world_size

    def start_at(self, epoch: int) -> None:
        if self._it is not None:
            raise RuntimeError("EpochLoader.start_at: the loader has started already")
        self.batch_sampler.start_epoch = epoch

    def set_mosaic_epochs(self, epochs: int) -> None:
        """Mosaic for the epochs before `epochs` (from 0), none after; set before the workers start."""
        if self._it is not None:
            raise RuntimeError("EpochLoader.set_mosaic_epochs: the loader has started already")
        self.dataset.mosaic_epochs = epochs

    def __iter__(self):
        if self._it is None:
            self._it = iter(self.loader)
        for _ in range(len(self)):
            yield next(self._it)


def build_dataloader(data_cfg: DataConfig, split: str, img_size: int, batch_size: int,
                     aug: AugmentParams | None = None, rect: bool = False, cache: str | None = None, workers: int = 0,
                     shuffle: bool = False, rank: int = -1, world_size: int = 1, seed: int = 0,
                     single_cls: bool = False, stride: int = 32,
                     pin_memory: bool | None = None) -> tuple[DataLoader | EpochLoader, DetectionDataset]:
    """Training (`aug` given) gets an EpochLoader; validation a plain DataLoader, optionally split
    across ranks. pin_memory (default: when CUDA is available) lets batches go to the GPU with
    non-blocking copies (Batch.pin_memory)."""
    dataset = build_dataset(data_cfg, split, img_size, batch_size, aug, rect, cache, single_cls, stride)
    batch_size = max(1, min(batch_size, len(dataset)))
    workers = max(0, min(workers, psutil.cpu_count() or 1, batch_size if batch_size > 1 else workers))
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    common = dict(num_workers=workers, collate_fn=collate,
                  pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                  worker_init_fn=_seed_worker, generator=generator, persistent_workers=workers > 0)
    if aug is not None:  # training: continuous across epochs
        sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world_size)
        return EpochLoader(DataLoader(dataset, batch_sampler=sampler, **common)), dataset
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed) \
        if world_size > 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        drop_last=False, **common)
    return loader, dataset

"""Decoded training/validation images, resized to img_size on the long side, read from the image
files or from a RAM or disk cache (`--cache ram|disk`)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil
from tqdm import tqdm

from utils.io import atomic_write_bytes
from utils.errors import ConfigError

LOG = logging.getLogger("gradpath.data")
RAM_FRACTION = 0.7  # of the memory available now that a RAM cache may take, all local ranks together
DISK_FRACTION = 0.9


class UnreadableImage(OSError):
    """An image that was readable when the label index was built and is not now."""


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) with the long side `size` and the short side rounded up, as the official loaders
    size it (dev32 box AP: +0.0004 over rounding to nearest). Integer arithmetic, so an exact
    product stays exact: in floats 147 * (320 / 147) rounds up to 321."""
    m = max(h, w, 1)
    return (-(-h * size // m), -(-w * size // m)) if m != size else (h, w)


class ImageReader:
    """images[i]: image i as BGR uint8 (h, w, 3), resized so that its long side is img_size.

    Training upsamples and downsamples with INTER_LINEAR (fast, and mosaic resamples anyway);
    validation downsamples with INTER_AREA, as the official loaders do (yolov5n box AP at
    320-512 on coco128 and coco_dev32: neither is consistently better, within 0.006).

    cache="ram" decodes everything up front, after checking that it fits (with torchrun every
    local rank holds its own copy, so LOCAL_WORLD_SIZE copies must fit). Forked workers share
    the arrays: their data buffers are never written, so no page is copied.
    cache="disk" writes one .npy per image to cache_dir, named by the source file's path, size,
    mtime and the resize, so an edited image is decoded again rather than served stale. Files are
    written atomically: concurrent workers or ranks never read half of one, and one that is
    unreadable anyway (a crash, a full disk) is decoded again and rewritten.
    """

    def __init__(self, files, shapes: np.ndarray, img_size: int, augment: bool, cache: str | None = None,
                 cache_dir: Path | None = None, threads: int | None = None):
        self.files, self.shapes, self.img_size = files, shapes, img_size
        self.interp = cv2.INTER_LINEAR if augment else cv2.INTER_AREA
        self.cache, self.cache_dir = cache, Path(cache_dir) if cache_dir is not None else None
        self.ram: dict[int, np.ndarray] = {}
        if cache not in (None, "ram", "disk"):
            raise ConfigError(f"--cache: '{cache}' is not one of ram, disk")
        if cache == "disk" and self.cache_dir is None:
            raise ConfigError("--cache disk: no cache folder given")
        if cache:
            self._fill(threads or min(8, os.cpu_count() or 1))

    def __len__(self) -> int:
        return len(self.files)

    def shape(self, i: int) -> tuple[int, int]:
        """(h, w) that images[i] will have, from the index alone (no decoding)."""
        h, w = (int(v) for v in self.shapes[i])
        return resized_shape(h, w, self.img_size)

    def nbytes(self, indices=None) -> int:
        return sum(h * w * 3 for h, w in map(self.shape, range(len(self)) if indices is None else indices))

    def __getitem__(self, i: int) -> np.ndarray:
        img = self.ram.get(i)
        if img is not None:
            return img
        if self.cache == "disk":
            return self._from_disk(i)
        return self._decode(i)

    def _decode(self, i: int) -> np.ndarray:
        path = self.files[i]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise UnreadableImage(f"{path}: cannot read image (removed or damaged since the label index was built)")
        h0, w0 = img.shape[:2]
        h, w = resized_shape(h0, w0, self.img_size)
        if (h, w) != (h0, w0):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR if h > h0 else self.interp)
        return img

    def npy_path(self, i: int) -> Path:
        path = Path(self.files[i])
        st = path.stat()
        h, w = self.shape(i)  # the size, not img_size: a change of the sizing rule is a new file
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{h}x{w}|{self.interp}"
        return self.cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"

    def _from_disk(self, i: int) -> np.ndarray:
        npy = self.npy_path(i)
        try:
            return np.load(npy, allow_pickle=False)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            LOG.warning("--cache disk: %s unreadable (%s), decoding the image again", npy, e)
        img = self._decode(i)
        atomic_write_bytes(npy, lambda f: np.save(f, img, allow_pickle=False), fsync=False)
        return img

    def _fill(self, threads: int) -> None:
        todo = list(range(len(self)))
        if self.cache == "ram":
            need, copies = self.nbytes(), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            free = psutil.virtual_memory().available
            if need * copies > RAM_FRACTION * free:
                each = f" x {copies} local ranks" if copies > 1 else ""
                raise ConfigError(f"--cache ram: needs {need / 2**30:.1f} GiB{each} but only {free / 2**30:.1f} GiB "
                                  f"is available; use --cache disk or no cache")
        else:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                free = shutil.disk_usage(self.cache_dir).free
            except OSError as e:
                raise ConfigError(f"--cache disk: cannot write {self.cache_dir}: {e}") from None
            todo = [i for i in todo if not self.npy_path(i).is_file()]
            need = self.nbytes(todo)
            if need > DISK_FRACTION * free:
                raise ConfigError(f"--cache disk: needs {need / 2**30:.1f} GiB more in {self.cache_dir} but only "
                                  f"{free / 2**30:.1f} GiB is free; use a smaller --img-size or no cache")
        # cv2 decodes and resizes without the GIL, so threads scale
        with ThreadPoolExecutor(threads) as pool:
            images = pool.map(self._decode if self.cache == "ram" else self._from_disk, todo)
            for i, img in zip(todo, tqdm(images, total=len(todo), desc=f"cache {self.cache}", leave=False)):
                if self.cache == "ram":
                    self.ram[i] = img
        LOG.info("cache %s: %d images resized to %d, %.2f GiB %s", self.cache, len(self), self.img_size,
                 need / 2**30, "in RAM" if self.cache == "ram" else f"newly written to {self.cache_dir}")

"""Decoded training/validation images, resized to img_size on the long side, read from the image
files or from a RAM or disk cache (`--cache ram|disk`)."""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil
from tqdm import tqdm

from utils import shared_memory
from utils.dist import dist_info_from_env, from_local_leader
from utils.io import atomic_write_bytes
from utils.errors import ConfigError
from utils.shared_memory import Handle, SharedBlock, SharedMemoryError

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

    cache="ram" decodes everything up front, after checking that it fits, into one block of
    shared memory per node: under torchrun local rank 0 fills it (with all its threads) while the
    node's other ranks wait, then they map it, and forked workers inherit the mapping, so the node
    holds one copy however many ranks and workers read it. Images are read-only views of it.
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
        self.block: SharedBlock | AnonymousBlock | None = None  # --cache ram: every image, back to back
        self.offsets: np.ndarray | None = None                  # image i is block[offsets[i]:offsets[i+1]]
        if cache not in (None, "ram", "disk"):
            raise ConfigError(f"--cache: '{cache}' is not one of ram, disk")
        if cache == "disk" and self.cache_dir is None:
            raise ConfigError("--cache disk: no cache folder given")
        if cache == "ram":
            self._fill_ram(threads)
        elif cache == "disk":
            self._fill_disk(threads or min(8, os.cpu_count() or 1))

    def __len__(self) -> int:
        return len(self.files)

    def shape(self, i: int) -> tuple[int, int]:
        """(h, w) that images[i] will have, from the index alone (no decoding)."""
        h, w = (int(v) for v in self.shapes[i])
        return resized_shape(h, w, self.img_size)

    def nbytes(self, indices=None) -> int:
        return sum(h * w * 3 for h, w in map(self.shape, range(len(self)) if indices is None else indices))

    def __getitem__(self, i: int) -> np.ndarray:
        if self.block is not None:
            return self._slot(i, writable=False)
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

    # ---- --cache ram: one shared block per node ----------------------------------------------------
    def _slot(self, i: int, writable: bool) -> np.ndarray:
        h, w = self.shape(i)
        a = np.frombuffer(self.block.buffer, np.uint8, h * w * 3, int(self.offsets[i])).reshape(h, w, 3)
        a.flags.writeable = writable and a.flags.writeable
        return a

    def _fill_ram(self, threads: int | None) -> None:
        sizes = [h * w * 3 for h, w in map(self.shape, range(len(self)))]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        if not shared_memory.supported():
            self._decode_into_block(threads, copies=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
            return
        info = dist_info_from_env()
        need = int(self.offsets[-1])
        handle = from_local_leader(info, f"ram-cache/{self._content_key()}",
                                   f"decode {len(self)} images for --cache ram ({need / 2**30:.2f} GiB)",
                                   lambda: self._decode_into_block(threads, copies=1))
        if self.block is not None:  # this process filled it
            return
        try:
            if not handle:
                raise SharedMemoryError("local rank 0 could not fill one" if handle is None else
                                        "local rank 0 could not make one it can share")
            self.block = SharedBlock.attach(Handle.decode(handle))
            LOG.info("cache ram: rank %d maps local rank 0's %.2f GiB (process %d)", info.rank, need / 2**30,
                     self.block.handle.pid)
        except SharedMemoryError as e:
            LOG.warning("cache ram: rank %d decodes a copy of its own: %s", info.rank, e)
            self._decode_into_block(threads, copies=1)

    def _content_key(self) -> str:
        """What the block holds: these files at these sizes, resized this way."""
        h = hashlib.sha1(f"{self.img_size}|{self.interp}|{len(self)}|".encode())
        h.update("\n".join(map(str, self.files)).encode())
        h.update(np.ascontiguousarray(self.shapes, np.int64).tobytes())
        return h.hexdigest()

    def _decode_into_block(self, threads: int | None, copies: int) -> str:
        """Check that `copies` blocks fit, make one and decode every image into it; its handle."""
        need = int(self.offsets[-1])
        free = psutil.virtual_memory().available
        if need * copies > RAM_FRACTION * free:
            each = f" x {copies} local ranks (no shared memory here: each holds a copy)" if copies > 1 else ""
            raise ConfigError(f"--cache ram: needs {need / 2**30:.1f} GiB{each} but only {free / 2**30:.1f} GiB "
                              f"is available; use --cache disk or no cache")
        try:
            self.block = SharedBlock.create(need, "gradpath-cache-ram")
        except SharedMemoryError:
            self.block = AnonymousBlock(need)
        # cv2 decodes and resizes without the GIL, so threads scale; the node's other ranks are waiting
        with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:
            done = pool.map(self._decode_into_slot, range(len(self)))
            for _ in tqdm(done, total=len(self), desc="cache ram", leave=False):
                pass
        kind = "shared memory (one copy per node)" if isinstance(self.block, SharedBlock) else "memory"
        LOG.info("cache ram: %d images resized to %d, %.2f GiB in %s", len(self), self.img_size, need / 2**30, kind)
        return self.block.handle.encode() if isinstance(self.block, SharedBlock) else ""

    def _decode_into_slot(self, i: int) -> None:
        img, (h, w) = self._decode(i), self.shape(i)
        if img.shape[:2] != (h, w):  # the file's size is not the one the labels give: fit it to them
            LOG.warning("%s: decoded %dx%d, the label index says %dx%d; resized to the labels' size", self.files[i],
                        img.shape[1], img.shape[0], w, h)
            img = cv2.resize(img, (w, h), interpolation=self.interp)
        np.copyto(self._slot(i, writable=True), img)

    # ---- --cache disk ------------------------------------------------------------------------------
    def _fill_disk(self, threads: int) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.cache_dir).free
        except OSError as e:
            raise ConfigError(f"--cache disk: cannot write {self.cache_dir}: {e}") from None
        todo = [i for i in range(len(self)) if not self.npy_path(i).is_file()]
        need = self.nbytes(todo)
        if need > DISK_FRACTION * free:
            raise ConfigError(f"--cache disk: needs {need / 2**30:.1f} GiB more in {self.cache_dir} but only "
                              f"{free / 2**30:.1f} GiB is free; use a smaller --img-size or no cache")
        with ThreadPoolExecutor(threads) as pool:
            for _ in tqdm(pool.map(self._from_disk, todo), total=len(todo), desc="cache disk", leave=False):
                pass
        LOG.info("cache disk: %d images resized to %d, %.2f GiB newly written to %s", len(self), self.img_size,
                 need / 2**30, self.cache_dir)


class AnonymousBlock:
    """Where no memfd can be made: anonymous shared memory, which forked workers still share (a
    pickled one, for spawned workers, carries its bytes)."""

    def __init__(self, size: int):
        self.size = size
        self.buffer = mmap.mmap(-1, max(size, 1))

    def __getstate__(self):
        return {"size": self.size, "data": bytes(self.buffer)}

    def __setstate__(self, state):
        self.size = state["size"]
        self.buffer = mmap.mmap(-1, max(self.size, 1))
        self.buffer[:len(state["data"])] = state["data"]

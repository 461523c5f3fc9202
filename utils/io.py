"""Files written atomically, read with clear errors: checkpoints (tensors and plain containers only) and YAML."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import yaml

from utils.errors import CheckpointError, ConfigError
from utils.paths import resolve_repo_path

# 2: the saved hyp's weight_decay is the hyp file's (1 saved it after scaling to the batch size)
FORMAT_VERSION = 2


def atomic_write_bytes(path: str | Path, write, fsync: bool = True) -> Path:
    """Call write(file_object) on a temporary file beside `path`, fsync it, then rename it.

    A crash (or SIGKILL) at any point leaves either the old file or the new one, never half.
    fsync=False for caches, which are checked on reading: it skips the wait for the disk, and
    only a power loss can then leave an empty file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_link(src: str | Path, dst: str | Path) -> Path:
    """Make dst a second name of src's file, atomically (a hard link renamed into place): a copy of
    a file just written, at no cost. src's later replacement by rename leaves dst as it was. Where
    the filesystem has no hard links (or src and dst are on different ones), a copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex}.tmp"
    try:
        os.link(src, tmp)
    except OSError:
        return atomic_copy(src, dst)
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """dst written atomically as a byte copy of src (a file of its own)."""
    def write(f):
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, 1 << 24)
    return atomic_write_bytes(dst, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Save a dict of state_dicts and plain metadata atomically (never a pickled model)."""
    import torch

    return atomic_write_bytes(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; every failure is one clear CheckpointError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes)")
    if not _looks_like_torch_save(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip archive nor the pickle that "
                              f"torch.save writes); --weights takes a .pt file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file contains objects other than tensors and plain "
            f"containers (it could run code when unpickled): {first}. Official pickled "
            f"checkpoints are converted with `python -m models.convert`.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as e:  # a damaged pickle fails inside the unpickler in any of these ways
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a gradpath checkpoint (expected a dict with a 'model' state_dict)")
    version = ckpt.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer gradpath (checkpoint format {version}; this one reads "
                              f"formats up to {FORMAT_VERSION}): update gradpath to load it")
    return ckpt


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (since torch 1.6; a truncated one still starts with a zip
    entry's signature) or, in the legacy format, a pickle (first byte 0x80, its protocol marker)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80")) or zipfile.is_zipfile(path)


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    p = resolve_repo_path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))

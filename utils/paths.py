"""Run folders and repository paths."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from utils.errors import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("gradpath")


def increment_path(base: str | Path, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp, exp2, exp3 ... the first that does not exist yet."""
    base = Path(base)
    if exist_ok or not base.exists():
        return base
    pattern = re.compile(rf"^{re.escape(base.name)}(\d+)$")
    taken = [int(m.group(1)) for p in base.parent.glob(f"{base.name}*") if (m := pattern.match(p.name))]
    return base.with_name(f"{base.name}{max(taken, default=1) + 1}")


def new_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """Create and return project/name (incremented unless exist_ok)."""
    run = increment_path(Path(project) / name, exist_ok)
    for attempt in range(100):  # another process may take the same name between check and mkdir
        try:
            run.mkdir(parents=True, exist_ok=exist_ok)
            return run
        except FileExistsError:
            run = increment_path(Path(project) / name, False)
    raise RuntimeError(f"could not create a run folder under {project}/{name}")


def resolve_repo_path(path: str | Path) -> Path:
    """A user path as given, else relative to the repo root (so cfgs work from any cwd)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() else p


def newest(pattern: str, root: str | Path = ".", required_by: str = "") -> Path | None:
    """The most recently modified file matching root/pattern, or None when nothing matches. With
    required_by (the flag that needs it, e.g. "--resume"), nothing matching is a CheckpointError
    naming the flag and the pattern instead."""
    files = sorted(Path(root).glob(pattern), key=lambda p: p.stat().st_mtime)
    if files:
        return files[-1]
    if required_by:
        raise CheckpointError(f"{required_by}: no {Path(root) / pattern} found")
    return None


def cache_path(preferred: str | Path) -> Path:
    """Where to keep a cache file or folder: `preferred` (beside the data it describes) when its
    folder can be written, else the same name under $XDG_CACHE_HOME/gradpath (~/.cache/gradpath),
    in a folder named after the data's folder, so datasets on read-only mounts keep their caches."""
    preferred = Path(preferred)
    folder = preferred.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    # root may write anywhere: a folder with no write bit (a shared, read-only dataset) is
    # left alone by everyone
    if os.access(existing, os.W_OK) and existing.stat().st_mode & 0o222:
        return preferred
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradpath"
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    moved = base / f"{folder.name}-{key}" / preferred.name
    LOG.info("%s is read-only: caching %s in %s", folder, preferred.name, moved.parent)
    return moved

"""Export outputs are written beside their destination under a hidden temporary name, checked,
and only then moved into place: a failed check or a crash leaves the user's files as they were."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from engine.export.checks import ExportError


def writable_dir(folder: Path) -> None:
    """Fail before any work when `folder` cannot hold the output (missing parents are made)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"{folder}: cannot write the export there ({e.strerror or e})") from None


@contextmanager
def staged_file(dest: Path):
    """Yields a temporary path beside `dest` (same suffix); on a clean exit it replaces dest."""
    writable_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def staged_dir(dest: Path):
    """Yields an empty temporary folder beside `dest`; on a clean exit it takes dest's place (an
    existing dest is moved aside first and removed only once the new one is in)."""
    writable_dir(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    old = dest.with_name(f".{dest.name}.old")
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for the temporary name only
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():  # the new folder is in: drop the old one; it is not: put the old one back
            shutil.rmtree(old, ignore_errors=True) if dest.exists() else old.rename(dest)

"""One block of memory that several processes map: made by one (an anonymous memfd), mapped by
the others through /proc/<pid>/fd of the maker, by a handle small enough for a store value.

Why a memfd and not a named POSIX segment (multiprocessing.shared_memory): it has no name to
leak (its pages are freed when the last process that maps it is gone, however they end), and it
does not live in /dev/shm, which Docker limits to 64 MB unless the container is started with
--ipc=host or --shm-size. Forked processes (DataLoader workers) inherit the mapping; a pickled
block maps itself again where it is unpickled.
"""
from __future__ import annotations

import mmap
import os
import sys
from dataclasses import dataclass


class SharedMemoryError(OSError):
    """The block could not be made or mapped here (the caller falls back to memory of its own)."""


@dataclass(frozen=True)
class Handle:
    pid: int
    fd: int
    inode: int
    size: int

    def encode(self) -> str:
        return f"{self.pid}:{self.fd}:{self.inode}:{self.size}"

    @classmethod
    def decode(cls, text: str) -> "Handle":
        return cls(*(int(v) for v in text.split(":")))


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class SharedBlock:
    """`size` bytes in `buffer` (an mmap; writable only in the process that made it). The maker
    keeps its descriptor open while the block lives: the others open it through /proc."""

    def __init__(self, fd: int, handle: Handle, writable: bool):
        self.handle, self.size, self.writable = handle, handle.size, writable
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.buffer = mmap.mmap(fd, max(handle.size, 1), flags=mmap.MAP_SHARED, prot=prot)
        self.fd = fd if writable else -1
        if not writable:
            os.close(fd)  # the mapping keeps the pages

    @classmethod
    def create(cls, size: int, name: str = "gradpath") -> "SharedBlock":
        if not supported():
            raise SharedMemoryError("shared memory blocks need Linux (memfd_create and /proc)")
        try:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            os.ftruncate(fd, max(size, 1))
        except OSError as e:
            raise SharedMemoryError(f"cannot make a {size / 2**30:.2f} GiB shared block: {e}") from None
        return cls(fd, Handle(os.getpid(), fd, os.fstat(fd).st_ino, size), writable=True)

    @classmethod
    def attach(cls, handle: Handle) -> "SharedBlock":
        """Map the block `handle` names, read-only; SharedMemoryError when its maker is gone or the
        descriptor now names something else."""
        try:
            fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SharedMemoryError(f"cannot open the shared block of process {handle.pid}: {e}") from None
        st = os.fstat(fd)
        if st.st_ino != handle.inode or st.st_size < handle.size:
            os.close(fd)
            raise SharedMemoryError(f"process {handle.pid}'s descriptor {handle.fd} is no longer the shared block")
        return cls(fd, handle, writable=False)

    def __del__(self):
        if getattr(self, "fd", -1) >= 0 and self.handle.pid == os.getpid():  # not a forked worker's copy
            os.close(self.fd)
            self.fd = -1

    def __getstate__(self):
        return {"handle": self.handle}

    def __setstate__(self, state):
        self.__dict__.update(SharedBlock.attach(state["handle"]).__dict__)

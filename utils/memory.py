"""Memory of the running process tree (the trainer's per-epoch log, the loader benchmark)."""
from __future__ import annotations

import psutil


def process_tree_rss(proportional: bool = False, pid: int | None = None) -> int:
    """Resident memory of this process (or of process `pid`) and its children (dataloader
    workers), in bytes. The plain sum counts every page the processes share (forked libraries,
    the label index, batches in shared memory) once per process; proportional=True counts shared
    pages once in all (PSS, Linux only)."""
    me = psutil.Process(pid)
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss if proportional else proc.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    return total

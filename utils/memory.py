"""Memory of the running process tree (the trainer's per-epoch log, the loader benchmark)."""
from __future__ import annotations

import psutil


def process_tree_rss() -> int:
    """Resident memory of this process and its children (dataloader workers), in bytes."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    return total

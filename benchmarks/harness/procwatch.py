"""Memory of a running process tree seen from outside: peak summed RSS and PSS while it runs, and
how much of a named shared mapping each process holds (benchmarks/scale.py)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Peaks:
    rss: int = 0                                      # bytes, the highest sum over the tree's processes
    pss: int = 0                                      # bytes, the same for PSS (shared pages counted once)
    samples: list = field(default_factory=list)       # (seconds since start, summed PSS) at each PSS sample


def tree(pid: int) -> list[psutil.Process]:
    try:
        me = psutil.Process(pid)
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return []


def tree_memory(pid: int, proportional: bool) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_full_info().pss if proportional else p.memory_info().rss
        except psutil.Error:  # a process that just exited
            pass
    return total


class Watch:
    """Samples the tree of `pid` in a thread until stop(): RSS every `every` s, PSS every
    `pss_every` s (reading smaps costs more)."""

    def __init__(self, pid: int, every: float = 0.05, pss_every: float = 1.0):
        self.pid, self.every, self.pss_every = pid, every, pss_every
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        last_pss = -1e9
        while not self._stop.is_set():
            self.peaks.rss = max(self.peaks.rss, tree_memory(self.pid, False))
            now = time.monotonic()
            if now - last_pss >= self.pss_every:
                pss = tree_memory(self.pid, True)
                self.peaks.pss = max(self.peaks.pss, pss)
                self.peaks.samples.append((now - self._t0, pss))
                last_pss = now
            self._stop.wait(self.every)

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join()
        return self.peaks


def mapping_memory(pid: int, name: str) -> list[tuple[int, int, int, int]]:
    """(pid, size, Rss, Pss) in bytes of the mappings whose path contains `name`, for every process
    of the tree that maps one."""
    out = []
    for p in tree(pid):
        sums = {"Size:": 0, "Rss:": 0, "Pss:": 0}
        found = inside = False
        try:
            with open(f"/proc/{p.pid}/smaps") as f:
                for line in f:
                    head = line.split(" ", 1)[0]
                    if "-" in head and line[0] in "0123456789abcdef":  # a mapping's first line
                        inside = name in line
                        found |= inside
                    elif inside and head in sums:
                        sums[head] += int(line.split()[1]) * 1024
        except OSError:
            continue
        if found:
            out.append((p.pid, sums["Size:"], sums["Rss:"], sums["Pss:"]))
    return out

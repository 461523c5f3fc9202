"""The rows of benchmarks/gpu_check.py: one markdown table, the same rows as JSON.

The JSON file is rewritten after every row, so a run cut short keeps everything it measured.
A row holds only what this run measured or checked; what it could not do says why (status
`skipped`), never a number from elsewhere."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from engine.device import is_out_of_memory
from utils.io import atomic_write_text
from utils.errors import error_line

STATUSES = ("pass", "FAIL", "measured", "skipped")


@dataclass
class Row:
    section: str
    check: str
    setting: str
    result: str
    status: str  # one of STATUSES
    values: dict[str, float] = field(default_factory=dict)  # the numbers behind `result`


class Report:
    def __init__(self, out_dir: Path | None, budget_s: float, meta: dict):
        self.rows: list[Row] = []
        self.out_dir, self.budget_s, self.meta = out_dir, budget_s, meta
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def add(self, section: str, check: str, setting: str, result: str, status: str, **values: float) -> Row:
        if status not in STATUSES:
            raise ValueError(f"row status '{status}': expected one of {', '.join(STATUSES)}")
        row = Row(section, check, setting, result, status, {k: round(float(v), 4) for k, v in values.items()})
        self.rows.append(row)
        print(f"[{self.elapsed():6.1f}s] {section} | {check} | {setting} | {result} | {status}", file=sys.stderr,
              flush=True)
        self.write()
        return row

    def measure(self, section: str, check: str, setting: str, fn: Callable[[], tuple[str, str, dict]]) -> Row:
        """Run fn() -> (result, status, values) unless the time budget is spent; an error or a CUDA
        out-of-memory becomes the row's result instead of ending the run."""
        if self.remaining() <= 0:
            return self.add(section, check, setting, f"skipped: time budget ({self.budget_s:.0f} s) spent", "skipped")
        try:
            result, status, values = fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not cost the others
            if is_out_of_memory(e):
                return self.add(section, check, setting, "out of memory", "FAIL")
            return self.add(section, check, setting, f"{type(e).__name__}: {error_line(e)[:200]}", "FAIL")
        return self.add(section, check, setting, result, status, **values)

    def table(self) -> str:
        lines = ["| section | check | setting | result | status |", "|---|---|---|---|---|"]
        lines += [f"| {r.section} | {r.check} | {r.setting} | {r.result} | {r.status} |" for r in self.rows]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        counts = {s: sum(r.status == s for r in self.rows) for s in STATUSES}
        return {"meta": {**self.meta, "elapsed_s": round(self.elapsed(), 1), "counts": counts},
                "rows": [asdict(r) for r in self.rows]}

    def write(self) -> None:
        if self.out_dir is not None:
            atomic_write_text(self.out_dir / "gpu_check.json", json.dumps(self.as_dict(), indent=1))

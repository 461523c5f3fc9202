"""pytest in a process of its own, its outcomes read back as JSON rather than from its text output.

The GPU check runs the cuda-marked tests in a child process so that its time limit can end the
whole process group: the training and inference runs those tests start go with it, and none
keeps the GPU busy during the speed rows. The child is this module:

    python -m benchmarks.harness.pytest_results RESULTS.jsonl -- PYTEST_ARGS...

It runs pytest.main with `Outcomes`, a plugin that appends one JSON line per test to RESULTS as
each test ends (the collected test ids first), so a run that is killed keeps every outcome that
finished; `read_results` reads them back.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

STATUSES = ("pass", "FAIL", "skipped")


@dataclass(frozen=True)
class Outcome:
    nodeid: str
    status: str  # pass | FAIL | skipped
    seconds: float  # setup, call and teardown
    message: str  # a failure's or a skip's first line; "" for a pass

    @property
    def name(self) -> str:
        """The test function's name with its parameters."""
        return self.nodeid.rpartition("::")[2]


@dataclass(frozen=True)
class Results:
    collected: tuple[str, ...]  # node ids, in run order
    outcomes: tuple[Outcome, ...]  # of the tests that ended


def _first_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):  # (file, line, "Skipped: why")
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr or "")
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else report.outcome


class Outcomes:
    """pytest plugin: the collected ids, then one line per test once its teardown has run."""

    def __init__(self, path: Path):
        self.path = path
        self._phases: dict[str, list[pytest.TestReport]] = {}

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:  # appended and flushed per test: a killed run keeps what ended
            f.write(json.dumps(record) + "\n")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._write({"collected": [item.nodeid for item in session.items]})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # an import error in the test file: no test of it runs
            self._write(asdict(Outcome(report.nodeid or "collection", "FAIL", 0.0, _first_line(report))))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        phases = self._phases.setdefault(report.nodeid, [])
        phases.append(report)
        if report.when == "teardown":
            self._write(asdict(outcome(self._phases.pop(report.nodeid))))


def outcome(phases: list[pytest.TestReport]) -> Outcome:
    """One test's setup, call and teardown reports -> its outcome (the first phase that did not pass decides)."""
    seconds = sum(r.duration for r in phases)
    for r in phases:
        if r.failed:
            return Outcome(r.nodeid, "FAIL", seconds, f"{'error in ' + r.when + ': ' if r.when != 'call' else ''}"
                                                      f"{_first_line(r)}")
        if r.skipped:
            return Outcome(r.nodeid, "skipped", seconds, _first_line(r))
    return Outcome(phases[0].nodeid, "pass", seconds, "")


def read_results(path: Path) -> Results:
    """What a run wrote to `path` (nothing if it never started; a line cut by a kill is left out)."""
    collected, outcomes = (), []
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "collected" in record:
            collected = tuple(record["collected"])
        else:
            outcomes.append(Outcome(**record))
    return Results(collected, tuple(outcomes))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        print("usage: python -m benchmarks.harness.pytest_results RESULTS.jsonl -- PYTEST_ARGS...", file=sys.stderr)
        return 2
    path = Path(args[0])
    path.unlink(missing_ok=True)
    return int(pytest.main(args[2:], plugins=[Outcomes(path)]))


if __name__ == "__main__":
    sys.exit(main())

"""The read-ahead / write-behind threads of detect.py: order, errors, early stop."""
from __future__ import annotations

import threading

import pytest

from engine.infer.pipeline import Behind, prefetch


def test_prefetch_keeps_order_and_raises_producer_errors_in_the_consumer():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(broken()):
            got.append(item)
    assert got == [1]


def test_prefetch_stopped_early_releases_its_thread():
    before = threading.active_count()
    for item in prefetch(iter(range(10_000)), depth=2):
        if item == 3:
            break
    assert threading.active_count() == before


def test_behind_runs_in_order_and_reports_the_first_error():
    seen = []
    b = Behind(seen.append, depth=2)
    for i in range(20):
        b.submit(i)
    b.close()
    assert seen == list(range(20))

    def fail(item):
        raise ValueError(f"bad {item}")

    b = Behind(fail)
    b.submit(7)
    with pytest.raises(ValueError, match="bad 7"):
        b.close()

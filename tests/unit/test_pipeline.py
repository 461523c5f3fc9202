"""The read-ahead / write-behind threads of detect.py: order, errors, early stop."""
from __future__ import annotations

import threading

import numpy as np

import pytest
import torch

from engine.infer.pipeline import Behind, prefetch
from engine.infer.predictor import bgr_to_input


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


def test_the_cpu_input_conversion_equals_the_flip_transpose_and_divide():
    """Predictor.preprocess on the CPU: the same float32 values, bit for bit, as flipping BGR to
    RGB, transposing to CHW and dividing by 255 in torch (what the official code and the GPU path do)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 160, 3), dtype=np.uint8) for _ in range(2)]
    images[1][:7] = 255  # the end points of the range too
    images[1][7:9] = 0
    expected = torch.from_numpy(np.ascontiguousarray(np.stack(images)[..., ::-1].transpose(0, 3, 1, 2))).float() / 255.0
    got = bgr_to_input(images)
    assert got.dtype == np.float32 and got.shape == (2, 3, 96, 160) and got.flags.c_contiguous
    assert torch.equal(torch.from_numpy(got), expected)
    assert got[1, :, 0].max() == 1.0 and got[1, :, 7].min() == 0.0

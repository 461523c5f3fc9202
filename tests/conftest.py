"""Shared test fixtures: repository paths, the bundled data and the optional ../shared/data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real COCO samples shipped beside the repo in CI; a user's clone may not have them.
SHARED_DATA = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
BUNDLED = ROOT / "datasets" / "coco-mini"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def bundled() -> Path:
    return BUNDLED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real COCO samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_cfg():
    """small_cfg(kind) -> gp-n-seg as a cfg dict, with its anchor-based head ('anchor') or an
    anchor-free one of the same width ('anchor_free'): both heads at CPU-test cost."""
    import yaml

    base = yaml.safe_load((ROOT / "cfg/models/gp-n-seg.yaml").read_text())

    def make(kind: str = "anchor") -> dict:
        cfg = {**base, "head": list(base["head"]), "name": f"gp-n-seg-{kind}"}
        if kind == "anchor_free":
            cfg["head"][-1] = [cfg["head"][-1][0], 1, "AnchorFreeHead", ["nc", 32, 64, 16]]
        return cfg

    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: here they skip, saying so (benchmarks/gpu_check.py runs them)."""
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA")
        for item in cuda_items:
            item.add_marker(skip)

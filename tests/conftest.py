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

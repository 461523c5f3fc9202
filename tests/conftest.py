"""Shared test fixtures: repository paths, the bundled data and the optional ../shared/data."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:  # the fixtures' annotations name it (tests/call_check.py reads them); imported where used
    from engine.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real COCO samples (shared/data) and the official files (shared/official) beside the repo in CI;
# a user's clone may not have them. This is the one place that says where they are.
SHARED_DATA = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHARED = SHARED_DATA.parent
OFFICIAL = SHARED / "official"
BUNDLED = ROOT / "datasets" / "coco-mini"


def run_scripts(calls: list[tuple[str, ...]], cwd: Path, timeout: int = 600) -> list:
    """Each (script, *args) of the repo run as its own `python script args` process, as many at once
    as there are cores (each CLI spends seconds importing torch before it reaches its check);
    their CompletedProcess results, in order."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def run(call):
        return subprocess.run([sys.executable, str(ROOT / call[0]), *call[1:]], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(run, calls))


def require_shared(path: Path, what: str) -> Path:
    """`path` if it exists; else skip the test, or fail it under GRADPATH_REQUIRE_SHARED=1 (set by
    .ci/run where ../shared exists, so that shared material that moved fails CI instead of
    skipping the tests that check against it)."""
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("GRADPATH_REQUIRE_SHARED") == "1":
        pytest.fail(f"GRADPATH_REQUIRE_SHARED=1: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _sigchld_restored():
    """A test that iterates a DataLoader with workers leaves torch's SIGCHLD handler installed for
    the rest of the process; with OpenVINO loaded by an earlier test, the next child process to exit
    (any subprocess.run) then crashes the test process in that handler. Each test gets back the
    handler it started with, so what one test's loaders install ends with it."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)


TORCH_THREADS = torch.get_num_threads()  # the session's, before any test ran


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Loading an ONNX Runtime or OpenVINO backend on the CPU puts torch on one thread for the
    process (engine.device.leave_cpu_to_runtime); every test after it gets the session's count
    back (not the count its own setup left: a module fixture that loads a backend runs first)."""
    yield
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def bundled() -> Path:
    return BUNDLED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require_shared(SHARED_DATA / "README.md", "real COCO samples")
    return SHARED_DATA


@pytest.fixture(scope="session")
def official() -> Path:
    """shared/official: the official checkpoints and the official code's outputs."""
    require_shared(OFFICIAL / "README.md", "official checkpoints")
    return OFFICIAL


@pytest.fixture(scope="session")
def small_cfg() -> Callable[..., dict]:
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


@pytest.fixture
def make_trainer(small_cfg, tmp_path) -> Callable[..., Trainer]:
    """make_trainer(kind, **options) -> a Trainer of the small model on the bundled data, built as
    train.py builds it, ready for train_step (no run has started: the per-run counters are zero)."""
    import yaml

    from engine.config import TrainOptions
    from engine.train.build import build_trainer

    def make(kind: str = "anchor", **options):
        cfg = tmp_path / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump(small_cfg(kind)))
        opt = {"cfg": str(cfg), "data": str(ROOT / "cfg/data/coco-mini.yaml"), "epochs": 1, "batch_size": 4,
               "img_size": 96, "workers": 0, "device": "cpu", "noval": True, "project": str(tmp_path / "runs"),
               **options}
        trainer = build_trainer(TrainOptions(**opt))
        trainer.accumulate_now = 1  # step on every batch
        return trainer

    return make


def ema_of(trainer):
    """The EMA a trainer's EMAHook keeps."""
    from engine.train.hooks import EMAHook

    return next(h.ema for h in trainer.hooks if isinstance(h, EMAHook))


# The overfitting runs' hyp (tests/e2e/test_train.py on the CPU, tests/cuda/test_cuda.py with AMP): every
# batch steps, no augmentation, and an LR that decays 100x so BatchNorm's running statistics catch up
# with the weights before the end (eval mode uses them)
OVERFIT_HYP = {"nominal_batch": 6, "warmup_epochs": 1.0, "warmup_min_iters": 0, "lr0": 0.002, "lrf": 0.01,
               "weight_decay": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0,
               "fliplr": 0.0, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0, "close_mosaic": 0}


def write_subset(folder: Path, n: int, large: bool = False) -> Path:
    """A dataset YAML in `folder` whose train and val splits are the same n bundled images (the
    first n, or with large=True the n with the fewest small objects: the easiest to fit at a low
    resolution)."""
    import json

    import yaml

    src = json.loads((BUNDLED / "annotations/instances_train.json").read_text())
    ids = [im["id"] for im in src["images"]]
    if large:
        small_share: dict[int, list[bool]] = {}
        for a in src["annotations"]:
            if not a["iscrowd"]:
                small_share.setdefault(a["image_id"], []).append(a["area"] < 64 * 64)
        ids = [k for _, k in sorted((sum(v) / len(v), k) for k, v in small_share.items())]
    keep = set(ids[:n])
    sub = {**src, "images": [i for i in src["images"] if i["id"] in keep],
           "annotations": [a for a in src["annotations"] if a["image_id"] in keep]}
    (folder / f"subset{n}.json").write_text(json.dumps(sub))
    split = {"images": "images", "annotations": str(folder / f"subset{n}.json")}
    out = folder / f"subset{n}.yaml"
    out.write_text(yaml.safe_dump({"format": "coco", "path": str(BUNDLED), "train": split, "val": split}))
    return out


@pytest.fixture
def subset_data(tmp_path) -> Callable[..., Path]:
    """subset_data(n, large=False) -> write_subset(tmp_path, n, large)."""
    return lambda n, large=False: write_subset(tmp_path, n, large)

"""The CUDA paths, on a GPU (skipped without one; `python benchmarks/gpu_check.py` runs them and
puts each result in its table): AMP training steps against the float32 CPU result, val.py FP32
and --half against the CPU's AP, detect.py --half on a video, export --half, torchrun with NCCL
and SyncBN, pinned batches, and the failure paths (CUDA out of memory, a non-finite AMP loss).

GRADPATH_CHECK_DIR, when set, keeps the trained checkpoint there for gpu_check's speed rows."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from conftest import BUNDLED, OVERFIT_HYP, ROOT, ema_of, write_subset
from data.config import load_data_config
from data.loader import build_dataloader
from engine.device import amp_precision
from engine.train.optim import build_optimizer
from benchmarks.harness.speed import mosaic_batches
from models.loss.losses import build_criterion
from models.model import build_model
from utils.io import load_checkpoint
from engine.config import Hyp
from utils.dist import select_device

pytestmark = pytest.mark.cuda
GPU = torch.device("cuda", 0)
AP_LINE = re.compile(r"Average Precision\s+\(AP\) @\[ IoU=0.50:0.95 \| area=\s+all \| maxDets=100 \] = ([-\d.]+)")


def run(script: str, *args: str, timeout: int = 300, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-m", script] if module else [str(ROOT / script)]), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    folder = os.environ.get("GRADPATH_CHECK_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("cuda")


@pytest.fixture(scope="session")
def overfit(work) -> tuple[Path, Path]:
    """(best.pt, data YAML): gp-n-seg trained with AMP on 6 coco-mini images until it finds them
    (val on the same images), so AP comparisons are between real, non-zero figures: the overfit run
    of tests/e2e/test_train.py, shortened (AMP on a GPU fits them in 200 epochs)."""
    data = write_subset(work, 6, large=True)
    best = work / "overfit/weights/best.pt"
    if not best.is_file():
        (work / "hyp.yaml").write_text(yaml.safe_dump(OVERFIT_HYP))
        r = run("train.py", "--data", data, "--hyp", work / "hyp.yaml", "--epochs", 200, "--img-size", 256,
                "--batch-size", 6, "--workers", 2, "--optimizer", "AdamW", "--cache", "--noval", "--nosave",
                "--device", 0, "--project", work, "--name", "overfit", "--exist-ok", timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
    return best, data


def box_and_mask_ap(stdout: str) -> tuple[float, float]:
    found = [float(v) for v in AP_LINE.findall(stdout)]
    assert len(found) == 2, stdout[-3000:]
    return found[0], found[1]


# --- training --------------------------------------------------------------------------------

# From the same batch with CPU autocast against float32 (tests' history: fp16 terms within 0.2%,
# whole-gradient cosine 0.97; bf16 1.1% and 0.76): reduced-precision activations, not bugs. A bug
# (an unscaled gradient, a term computed on the wrong tensor) is off by orders of magnitude.
TOLERANCE = {"fp16": {"term": 0.01, "cos": 0.9, "norm": (0.8, 1.25)},
             "bf16": {"term": 0.03, "cos": 0.5, "norm": (0.5, 2.0)}}


def _loss_and_grad(model, batch, device, precision):
    """(loss terms, flat gradient) of one step: autocast forward, scaled backward, unscaled grads."""
    model = model.to(device).train()
    optimizer = build_optimizer(model, "SGD", 0.01, 0.937, 0.0)
    scaler = precision.grad_scaler()
    b = batch.to(device)
    with precision.autocast(device):
        outputs = model(b.images.float() / 255)
    loss, terms = build_criterion(Hyp.load().loss, model.head.kind, b.images.shape[-1])(outputs, b)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad = torch.cat([p.grad.float().flatten().cpu() for p in model.parameters()])
    return {k: float(v) for k, v in terms.items()}, grad


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_amp_train_step_matches_the_fp32_cpu_step(small_cfg, kind, amp):
    torch.manual_seed(0)
    model = build_model(small_cfg(kind))
    batch = mosaic_batches(load_data_config(ROOT / "cfg/data/coco-mini.yaml"), 320, 8, 1, workers=2)[0]
    ref_terms, ref_grad = _loss_and_grad(copy.deepcopy(model), batch, torch.device("cpu"),
                                         amp_precision(torch.device("cpu"), False))
    precision = amp_precision(GPU, True, amp)
    assert precision.amp and precision.scaled == (amp == "fp16")
    terms, grad = _loss_and_grad(copy.deepcopy(model), batch, GPU, precision)
    tol = TOLERANCE[amp]
    assert terms.keys() == ref_terms.keys()
    for k in terms:
        assert abs(terms[k] - ref_terms[k]) <= tol["term"] * abs(ref_terms[k]), (k, terms[k], ref_terms[k])
    assert torch.isfinite(grad).all()
    cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item()
    ratio = (grad.norm() / ref_grad.norm()).item()
    assert cos >= tol["cos"] and tol["norm"][0] <= ratio <= tol["norm"][1], (cos, ratio)


def test_failure_non_finite_amp_loss_skips_the_step_as_on_cpu(make_trainer):
    """Weights that float32 holds but float16 does not: under AMP the loss is non-finite and the
    step is skipped, leaving parameters, BatchNorm statistics, optimizer, scaler and EMA as they
    were (tests/test_device.py checks the same on the CPU with an infinite weight)."""
    trainer = make_trainer("anchor", device="0")
    assert trainer.precision.scaled
    batch = next(iter(trainer.loader))
    conv = trainer.model.layers[0].conv
    sane = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.mul_(1e6)
    b = batch.to(GPU)
    with torch.no_grad():  # the premise: finite in float32
        loss32, _ = trainer.criterion(trainer.model(b.images.float() / 255), b)
    assert torch.isfinite(loss32)
    state, scale = copy.deepcopy(trainer.model.state_dict()), trainer.scaler.get_scale()
    assert trainer.train_step(batch, 0) == {} and trainer.skipped_steps == 1
    after = trainer.model.state_dict()
    assert [k for k in state if not torch.equal(state[k], after[k])] == []
    assert trainer.scaler.get_scale() == scale and ema_of(trainer).updates == 0 and not trainer.optimizer.state
    with torch.no_grad():
        conv.weight.copy_(sane)
    assert trainer.train_step(batch, 0) and trainer.bad_steps == 0 and ema_of(trainer).updates == 1


def test_failure_out_of_memory_ends_in_one_line_and_the_run_folder_stays_usable(work):
    """A batch far beyond the GPU's memory: yolor-elan-af-seg, 24 mosaics at 2560 px (16x the
    pixels per image of the 640 px rows of the speed section)."""
    args = ["--cfg", "cfg/models/yolor-elan-af-seg.yaml", "--epochs", "1", "--workers", "0", "--noval",
            "--device", "0", "--project", str(work), "--name", "oom", "--exist-ok"]
    r = run("train.py", *args, "--img-size", 2560, "--batch-size", 24, timeout=400)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("train.py: error: CUDA out of memory training at --batch-size 24 --img-size 2560 on cuda:0")
    assert "GiB total" in last and (work / "oom/config.yaml").is_file()
    r = run("train.py", *args, "--img-size", 256, "--batch-size", 8, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(work / "oom/weights/last.pt")["epoch"] == 0


def test_torchrun_one_process_nccl_sync_bn_two_steps(work, small_cfg):
    cfg = work / "small.yaml"
    cfg.write_text(yaml.safe_dump(small_cfg("anchor")))
    data = write_subset(work, 4)  # 4 images at batch 2: two steps
    r = run("torch.distributed.run", "--nproc_per_node", 1, "--master_port", 29541, ROOT / "train.py",
            "--cfg", cfg, "--data", data, "--epochs", 1, "--img-size", 256, "--batch-size", 2, "--workers", 2,
            "--device", 0, "--sync-bn", "--noval", "--project", work, "--name", "ddp", "--exist-ok", module=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed: nccl backend, rank 0 of 1 on cuda:0" in r.stderr
    assert re.search(r"SyncBatchNorm: [1-9]\d* layers", r.stderr), r.stderr[-3000:]
    ckpt = load_checkpoint(work / "ddp/weights/last.pt")
    assert ckpt["epoch"] == 0 and not any(k.startswith("module.") for k in ckpt["model"])


def test_pinned_batches_reach_the_gpu_without_blocking():
    loader, _ = build_dataloader(load_data_config(ROOT / "cfg/data/coco-mini.yaml"), "train", 256, 4,
                                 Hyp.load().aug, workers=2, pin_memory=True)
    batch = next(iter(loader))
    assert batch.images.is_pinned() and batch.masks.is_pinned() and batch.boxes.is_pinned()
    moved = batch.to(GPU, non_blocking=True)
    torch.cuda.synchronize(GPU)
    assert torch.equal(moved.images.cpu(), batch.images) and moved.masks.device == GPU


def test_device_selection_on_a_real_gpu():
    assert select_device("0") == GPU and select_device("") == GPU
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"^--device {n}: no CUDA device {n} \\({n} visible"):
        select_device(str(n))


# --- inference -------------------------------------------------------------------------------

@pytest.mark.parametrize("half", [False, True], ids=["fp32", "half"])
def test_val_on_the_gpu_gives_the_cpus_ap(overfit, work, half):
    best, data = overfit
    common = ["--weights", best, "--data", data, "--img-size", 256, "--workers", 2, "--project", work / "val",
              "--exist-ok"]
    cpu = run("val.py", *common, "--device", "cpu", "--name", "cpu")
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    gpu = run("val.py", *common, "--device", 0, "--name", "gpu_half" if half else "gpu", *(["--half"] if half else []))
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    (cpu_box, cpu_mask), (box, mask) = box_and_mask_ap(cpu.stdout), box_and_mask_ap(gpu.stdout)
    assert cpu_box > 0.1 and cpu_mask > 0.1, cpu.stdout[-2000:]  # the comparison is between real figures
    assert abs(box - cpu_box) <= 0.002 and abs(mask - cpu_mask) <= 0.002, (box, cpu_box, mask, cpu_mask)


def write_video(path: Path, frames: int = 30, size: tuple[int, int] = (640, 480)) -> Path:
    """A short mp4 of the bundled images, each held for 3 frames."""
    images = sorted((BUNDLED / "images").glob("*.jpg"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    for i in range(frames):
        writer.write(cv2.resize(cv2.imread(str(images[(i // 3) % len(images)])), size))
    writer.release()
    return path


def test_detect_half_on_a_video_matches_fp32(overfit, work):
    best, _ = overfit
    video = write_video(work / "clip.mp4")
    counts = {}
    for name, extra in (("fp32", []), ("half", ["--half"])):
        r = run("detect.py", "--weights", best, "--source", video, "--img-size", 256, "--device", 0, "--save-json",
                "--project", work / "detect", "--name", name, "--exist-ok", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        out = cv2.VideoCapture(str(work / "detect" / name / "clip.mp4"))
        assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
        out.release()
        counts[name] = len(json.loads((work / "detect" / name / "predictions.json").read_text()))
    assert counts["fp32"] > 0 and abs(counts["half"] - counts["fp32"]) <= max(2, 0.05 * counts["fp32"]), counts


def test_export_half_on_the_gpu_matches_pytorch(overfit, work):
    best, _ = overfit
    out = work / "half.onnx"
    r = run("export.py", "--weights", best, "--half", "--device", 0, "--img-size", 256, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    diff = float(re.search(r"max abs diff ([\d.e+-]+)", r.stdout).group(1))
    assert out.is_file() and diff < 1.0, r.stdout  # outputs in pixels; float16 steps 0.125-0.25 px there


# --- TensorRT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("nms", [False, True], ids=["raw", "end2end"])
def test_tensorrt_engine_equals_pytorch(small_cfg, work, nms):
    """FP32 engines of a small model (scores spread as a trained model's), raw and end-to-end, read
    back through the TensorRT backend: the detections and masks of PyTorch on real images."""
    pytest.importorskip("tensorrt")
    from engine.export.checks import check_input, compare_detections
    from engine.export.exporter import export
    from engine.export.options import ExportOptions
    from engine.infer.backends import load_backend
    from tests.spread import spread_head
    from utils.io import save_checkpoint
    from utils.postprocess import to_detections

    torch.manual_seed(0)
    images = sorted((BUNDLED / "images").glob("*.jpg"))
    model = build_model(small_cfg("anchor")).eval()
    spread_head(model, check_input(192, 1, images[0])[0])
    ckpt = {"model": model.state_dict(), "ema": None,
            "config": {"model": model.yaml, "nc": 80, "names": [str(i) for i in range(80)], "img_size": 192}}
    src = save_checkpoint(ckpt, work / f"trt_{'e2e' if nms else 'raw'}.pt")
    (e,) = export(ExportOptions(weights=str(src), include=("engine",), device="0", nms=nms, conf_thres=0.5))
    assert e.path.suffix == ".engine" and e.precision == "fp32"
    parts = [check_input(192, 1, p) for p in images[1:3]]
    x, orig, rps = torch.cat([p[0] for p in parts]).to(GPU), [p[1] for p in parts], [p[2] for p in parts]
    engine, ref = load_backend(e.path, GPU), load_backend(src, GPU)
    assert engine.meta.end2end == nms and engine.meta.img_size == 192
    refs = to_detections(ref(x), (192, 192), orig, rps, 0.5, 0.45, 100)
    gots = to_detections(engine(x), (192, 192), orig, rps, 0.5, 0.45, 100)
    for r, g in zip(refs, gots):
        d = compare_detections(r, g)  # on the GPU both
        assert d.n_ref > 0 and d.ok(), d.largest


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_val_ap_matches_the_checkpoint(overfit, work, precision):
    """export.py --include engine (FP16, or INT8 calibrated on the training images, which prints
    its AP against PyTorch), then val.py --weights best.engine: the checkpoint's AP within 0.005
    (FP16) or 0.05 (INT8, on 6 images)."""
    pytest.importorskip("tensorrt")
    best, data = overfit
    out = work / f"trt_{precision}.onnx"
    flag = ["--half"] if precision == "fp16" else ["--int8", "--data", data]
    r = run("export.py", "--weights", best, "--include", "engine", *flag, "--dynamic", "--device", 0,
            "--img-size", 256, "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    engine = out.with_suffix(".engine")
    assert engine.is_file() and f"(engine {precision}:" in r.stdout, r.stdout
    common = ["--data", data, "--img-size", 256, "--workers", 2, "--project", work / "val", "--exist-ok"]
    pt = run("val.py", "--weights", best, *common, "--device", 0, "--name", "trt_pt")
    trt = run("val.py", "--weights", engine, *common, "--device", 0, "--name", f"trt_{precision}")
    assert pt.returncode == 0 and trt.returncode == 0, (pt.stderr[-2000:], trt.stderr[-2000:])
    (pt_box, pt_mask), (box, mask) = box_and_mask_ap(pt.stdout), box_and_mask_ap(trt.stdout)
    tol = 0.005 if precision == "fp16" else 0.05
    assert pt_box > 0.1 and abs(box - pt_box) <= tol and abs(mask - pt_mask) <= tol, (box, pt_box, mask, pt_mask)
    if precision == "int8":
        assert "INT8 vs PyTorch FP32 on" in r.stdout, r.stdout

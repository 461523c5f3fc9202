"""The sections of benchmarks/gpu_check.py: environment, CUDA correctness (the `cuda`-marked
tests), speed and memory, failure paths. Each adds rows to a Report; the work folder holds what
the run writes (the tests' checkpoint, logs, generated data)."""
from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import yaml
from torch import nn

from data.config import load_data_config
from data.loader import build_dataloader
from engine.device import CHANNELS_LAST, Precision, amp_precision, compile_model, configure_cuda, memory_format
from benchmarks.harness.gpu_report import Report
from benchmarks.harness.pytest_results import Results, read_results
from benchmarks.harness.speed import (StepRate, first_images, forward_latency_ms, loader_rate, mosaic_batches, time_forward_ms, train_step_rate)
from models.model import build_model
from engine.config import Hyp
from utils.paths import REPO_ROOT
from utils.structures import Batch

ENV, CORRECT, SPEED, FAIL = "environment", "CUDA correctness", "speed and memory", "failure paths"
NO_CUDA = "skipped: no CUDA"


@dataclass(frozen=True)
class Settings:
    img_size: int
    cfgs: tuple[str, ...]
    batch_sizes: tuple[int, ...]  # training; the first is also the loader's batch
    warmup: int  # untimed training steps first: allocator, cuDNN autotuning, compilation
    steps: int  # timed training steps per setting
    batch_workers: int  # workers that build the mosaic batches of the training rows
    workers: tuple[int, ...]  # loader workers to measure
    loader_batches: int
    infer_batches: tuple[int, ...]
    runs: int  # timed forward passes per latency
    val_copies: int  # the 8 coco-mini val images, repeated, for the validation rate
    probe_cfg: str  # the one setting of the channels_last and bf16 comparisons
    probe_batch: int
    compile_cfg: str
    compile_backend: str
    pytest_timeout: int
    advise: bool  # say which defaults the figures support (not from the quick settings: too small to decide)


FULL = Settings(640, ("gp-n-seg", "yolor-elan-seg", "yolor-elan-af-seg"), (16, 32, 64), 2, 3, 12, (4, 8, 12), 40,
                (1, 32), 10, 16, "yolor-elan-seg", 32, "gp-n-seg", "inductor", 330, True)
# CPU: every code path on the smallest inputs; 'eager' compiles the wiring without code generation
QUICK = Settings(128, ("gp-n-seg",), (2,), 1, 2, 0, (0, 2), 4, (1, 2), 2, 1, "gp-n-seg", 2, "gp-n-seg", "eager", 120, False)


@dataclass
class Context:
    device: torch.device
    settings: Settings
    work: Path  # what the run writes
    out: Path  # what it reports: the tests' log beside gpu_check.json
    _batches: list[Batch] = field(default_factory=list)
    _models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def data(self):
        return load_data_config(REPO_ROOT / "cfg/data/coco-mini.yaml")

    def batches(self, batch_size: int) -> list[Batch]:
        """The training rows' real mosaic batches (made once, the same for every row), cut to batch_size."""
        s = self.settings
        if not self._batches:
            size, n = max(*s.batch_sizes, s.probe_batch), s.warmup + s.steps
            try:
                self._batches = mosaic_batches(self.data, s.img_size, size, n, workers=s.batch_workers)
            except RuntimeError:  # workers need shared memory (/dev/shm) for the batches: build them here
                self._batches = mosaic_batches(self.data, s.img_size, size, n, workers=0)
        return [first_images(b, batch_size) for b in self._batches]

    def model(self, cfg: str) -> nn.Module:
        """A fresh copy of the cfg's model (built once: every row starts from the same weights)."""
        if cfg not in self._models:
            self._models[cfg] = build_model(cfg, num_classes=80)
        return copy.deepcopy(self._models[cfg])

    def train_rate(self, cfg: str, batch_size: int, precision: Precision, fmt=torch.contiguous_format,
                   compile_backend: str | None = None) -> StepRate:
        model = self.model(cfg)
        compile_model(model, compile_backend is not None, compile_backend or "inductor")
        return train_step_rate(model, self.batches(batch_size), self.device, precision, fmt, self.settings.warmup)


# --- environment -------------------------------------------------------------------------------

def environment(report: Report, ctx: Context) -> None:
    shm = shutil.disk_usage("/dev/shm").total / 2**30 if Path("/dev/shm").is_dir() else 0.0
    report.add(ENV, "host", "", f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB memory, "
               f"/dev/shm {shm:.1f} GiB (the loader's workers hand batches over there)", "measured", shm_gib=shm)
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, " \
               f"Python {platform.python_version()}"
    if not ctx.cuda:
        report.add(ENV, "device", "cpu", f"{torch.get_num_threads()} torch threads", "measured")
        report.add(ENV, "software", "", versions, "measured")
        report.add(ENV, "TF32, bf16", "", NO_CUDA, "skipped")
        return
    p = torch.cuda.get_device_properties(ctx.device)
    report.add(ENV, "device", str(ctx.device), f"{p.name}, compute {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
               f"{p.multi_processor_count} SMs", "measured",
               memory_gib=p.total_memory / 2**30)
    report.add(ENV, "software", "", versions, "measured")
    flags = configure_cuda(ctx.device, fixed_shapes=True)
    report.add(ENV, "TF32, bf16", "", f"TF32 {'on' if flags['tf32'] else 'off (before Ampere)'}, "
               f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}", "measured")


# --- CUDA correctness and failure paths: the cuda-marked tests ------------------------------------

CUDA_TESTS = "tests/cuda/test_cuda.py"


@dataclass(frozen=True)
class PytestRun:
    results: Results  # what the plugin wrote: the collected ids and each finished test's outcome
    output: str  # pytest's -v output, for the log
    timed_out: bool
    returncode: int | None  # None when timed out


def cuda_tests(report: Report, ctx: Context, path: str = CUDA_TESTS) -> None:
    """pytest -m cuda on `path`, one row per test (test_failure_* under failure paths), each row's
    setting the test's node id. When it runs out of time, the tests that finished still get their
    rows and those that did not run say so."""
    log = ctx.out / "cuda_tests.log"
    timeout = max(30, min(ctx.settings.pytest_timeout, int(report.remaining())))
    env = {**os.environ, "GRADPATH_CHECK_DIR": str(ctx.work / "cuda"), "PYTHONUNBUFFERED": "1"}
    run = run_tests([path, "-m", "cuda", "-v", "-p", "no:cacheprovider"], ctx.work / "cuda_tests.jsonl", timeout,
                    env)
    log.write_text(run.output)
    add_test_rows(report, run, path, timeout, log.name)


def run_tests(pytest_args: list[str], results: Path, timeout: float, env: dict) -> PytestRun:
    """pytest.main(pytest_args) in a process group of its own (benchmarks/harness/pytest_results.py)."""
    cmd = [sys.executable, "-m", "benchmarks.harness.pytest_results", str(results), "--", *pytest_args]
    output, timed_out, returncode = run_process_group(cmd, timeout, env)
    return PytestRun(read_results(results), output, timed_out, returncode)


def add_test_rows(report: Report, run: PytestRun, path: str, timeout: float, log_name: str) -> None:
    outcomes, ended = run.results.outcomes, {o.nodeid for o in run.results.outcomes}
    # exit 0: all passed or skipped; 1: some failed (their rows say which); anything else went wrong
    if run.timed_out or run.returncode not in (0, 1) or not outcomes:
        why = f"timed out after {timeout:.0f} s" if run.timed_out else f"pytest exit code {run.returncode}"
        report.add(CORRECT, "pytest -m cuda", path, f"{why} after {len(outcomes)} of {len(run.results.collected)} "
                   f"tests (log: {log_name})", "FAIL")
    for o in outcomes:
        report.add(FAIL if o.name.startswith("test_failure_") else CORRECT, check_name(o.name), o.nodeid,
                   {"pass": f"ok ({o.seconds:.1f} s)", "skipped": f"skipped: {o.message}"}.get(o.status, o.message),
                   o.status)
    for nodeid in run.results.collected:
        if nodeid not in ended:
            name = nodeid.rpartition("::")[2]
            report.add(FAIL if name.startswith("test_failure_") else CORRECT, check_name(name), nodeid,
                       "skipped: not run (the tests timed out)" if run.timed_out else "skipped: not run", "skipped")


def check_name(test: str) -> str:
    """test_failure_out_of_memory_x[p] -> 'out of memory x [p]'."""
    func, _, params = test.partition("[")
    return func.removeprefix("test_failure_").removeprefix("test_").replace("_", " ") + (f" [{params}" if params else "")


def run_process_group(cmd: list[str], timeout: float, env: dict) -> tuple[str, bool, int | None]:
    """(stdout and stderr, timed out, exit code or None). On time-out the whole process group goes,
    so no training the tests started keeps the GPU busy during the speed rows."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        return proc.communicate(timeout=timeout)[0], False, proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0], True, None


# --- speed and memory ---------------------------------------------------------------------------

SPEED_PARTS = ("train", "loader", "inference", "val", "channels_last", "bf16", "compile", "tensorrt")


def speed(report: Report, ctx: Context, parts: tuple[str, ...] = SPEED_PARTS) -> None:
    """The speed and memory rows, in this order (what comes last is what a spent budget skips)."""
    rates = train_grid(report, ctx) if "train" in parts else {}
    steps = {"loader": lambda: loader_rows(report, ctx, rates), "inference": lambda: inference_rows(report, ctx),
             "val": lambda: val_rate(report, ctx), "channels_last": lambda: channels_last_rows(report, ctx, rates),
             "bf16": lambda: bf16_row(report, ctx, rates), "compile": lambda: compile_rows(report, ctx, rates),
             "tensorrt": lambda: tensorrt_row(report, ctx)}
    for part in SPEED_PARTS[1:]:
        if part in parts:
            steps[part]()


def _precision_label(ctx: Context, amp: str = "fp16") -> str:
    return f"AMP {amp}" if ctx.cuda else "fp32 (no CUDA: no AMP)"


def train_grid(report: Report, ctx: Context) -> dict[tuple[str, int], StepRate]:
    """Training img/s and peak memory for every cfg and batch size, on the same real mosaic batches."""
    s, rates = ctx.settings, {}
    configure_cuda(ctx.device, fixed_shapes=True)
    precision = amp_precision(ctx.device, True, "fp16")
    for cfg in s.cfgs:
        for bs in s.batch_sizes:
            def run(cfg=cfg, bs=bs):
                r = rates[(cfg, bs)] = ctx.train_rate(cfg, bs, precision)
                memory = "GPU peak" if ctx.cuda else "process peak RSS"
                return (f"{_rate(r.images_per_s)} img/s, {memory} {r.peak_gib:.2f} GiB", "measured",
                        {"img_per_s": r.images_per_s, "peak_gib": r.peak_gib})
            report.measure(SPEED, f"train {cfg}", f"batch {bs}, {s.img_size} px, {_precision_label(ctx)}", run)
            _free(ctx)
    return rates


def _rate(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def loader_rows(report: Report, ctx: Context, rates: dict[tuple[str, int], StepRate]) -> None:
    """The training loader's img/s per worker count, and whether the GPU would wait for it."""
    s, bs, best = ctx.settings, ctx.settings.batch_sizes[0], {}
    for w in s.workers:
        def run(w=w):
            loader, _ = build_dataloader(ctx.data, "train", s.img_size, bs, Hyp.load().aug, shuffle=True,
                                         workers=w, pin_memory=ctx.cuda)
            rate, _, _ = loader_rate(loader, s.loader_batches)
            best[w] = rate
            return f"{_rate(rate)} img/s", "measured", {"img_per_s": rate}
        report.measure(SPEED, "loader (mosaic, coco-mini)", f"{w} workers, batch {bs}, {s.img_size} px", run)
    if not best:
        return
    w, loader = max(best.items(), key=lambda kv: kv[1])
    verdicts = []
    for cfg in s.cfgs:
        if (cfg, bs) in rates:
            step = rates[(cfg, bs)].images_per_s
            verdicts.append(f"{cfg}: {'yes' if step > loader else 'no'} (step {_rate(step)} img/s)")
    report.add(SPEED, "training waits for data?", f"best loader {_rate(loader)} img/s ({w} workers), batch {bs}",
               "; ".join(verdicts) or "no training rate to compare", "measured")


def inference_rows(report: Report, ctx: Context) -> None:
    s = ctx.settings
    dtype, label = (torch.float16, "FP16") if ctx.cuda else (torch.float32, "FP32 (no CUDA: no FP16)")
    fmt = memory_format(ctx.device, "inference")
    for cfg in s.cfgs:
        model = ctx.model(cfg).fuse()
        for bs in s.infer_batches:
            def run(bs=bs):
                ms = forward_latency_ms(model, bs, s.img_size, ctx.device, dtype, fmt, warmup=2, runs=s.runs)
                return f"{ms:.2f} ms/image", "measured", {"ms_per_image": ms}
            report.measure(SPEED, f"inference {cfg}", f"batch {bs}, {s.img_size} px, {label}, fused", run)
    _free(ctx)


def val_rate(report: Report, ctx: Context) -> None:
    """evaluate() (val.py's path: loader, model, NMS, masks, RLE, COCO scoring) end to end."""
    from engine.checkpoint import load_model
    from engine.eval.evaluator import evaluate

    s = ctx.settings
    best = ctx.work / "cuda/overfit/weights/best.pt"
    data = replicated_val(ctx.work / "valset", s.val_copies) if s.val_copies > 1 else ctx.data
    setting = f"{8 * s.val_copies} coco-mini val images, batch 32, {s.img_size} px, " \
              f"{'FP16' if ctx.cuda else 'FP32'}, {'the tests checkpoint' if best.is_file() else 'untrained gp-n-seg'}"

    def run():
        configure_cuda(ctx.device, fixed_shapes=False)
        model = load_model(best, ctx.device, fuse=True)[0] if best.is_file() else \
            build_model("gp-n-seg", num_classes=80).fuse().eval().to(ctx.device)
        loader, dataset = build_dataloader(data, "val", s.img_size, 32, rect=True, workers=max(s.workers),
                                           pin_memory=ctx.cuda)
        t0 = time.perf_counter()
        result = evaluate(model, loader, dataset, ctx.device, half=ctx.cuda)
        rate = result.n_images / (time.perf_counter() - t0)
        sp = result.speed
        return (f"{_rate(rate)} img/s end to end (model {sp['inference']:.2f}, postprocess {sp['postprocess']:.2f} "
                f"ms/image)", "measured", {"img_per_s": rate, **{f"{k}_ms": v for k, v in sp.items()}})
    report.measure(SPEED, "validation (val.py path)", setting, run)


def replicated_val(folder: Path, copies: int):
    """coco-mini's val split repeated `copies` times under new ids and names (links to the images)."""
    src = json.loads((REPO_ROOT / "datasets/coco-mini/annotations/instances_val.json").read_text())
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for c in range(copies):
        for im in src["images"]:
            name = f"c{c}_{im['file_name']}"
            link = folder / "images" / name
            if not link.exists():
                link.symlink_to(REPO_ROOT / "datasets/coco-mini/images" / im["file_name"])
            images.append({**im, "id": c * 10**7 + im["id"], "file_name": name})
        anns += [{**a, "id": c * 10**7 + a["id"], "image_id": c * 10**7 + a["image_id"]} for a in src["annotations"]]
    (folder / "instances.json").write_text(json.dumps({**src, "images": images, "annotations": anns}))
    split = {"images": "images", "annotations": "instances.json"}
    (folder / "data.yaml").write_text(yaml.safe_dump({"format": "coco", "path": str(folder), "train": split,
                                                      "val": split}))
    return load_data_config(folder / "data.yaml")


def channels_last_rows(report: Report, ctx: Context, rates: dict[tuple[str, int], StepRate]) -> None:
    """channels_last against the default layout, training and inference: the evidence for
    engine/device.py's CHANNELS_LAST table."""
    s, cfg, bs = ctx.settings, ctx.settings.probe_cfg, ctx.settings.probe_batch
    precision = amp_precision(ctx.device, True, "fp16")

    def train():
        base = rates.get((cfg, bs)) or ctx.train_rate(cfg, bs, precision)
        cl = ctx.train_rate(cfg, bs, precision, torch.channels_last)
        return _verdict(ctx, "train", cl.images_per_s / base.images_per_s,
                        f"{_rate(cl.images_per_s)} vs {_rate(base.images_per_s)} img/s")

    def inference():
        dtype = torch.float16 if ctx.cuda else torch.float32
        model, b = ctx.model(cfg).fuse(), max(s.infer_batches)
        plain = forward_latency_ms(model, b, s.img_size, ctx.device, dtype, torch.contiguous_format, 2, s.runs)
        cl = forward_latency_ms(model, b, s.img_size, ctx.device, dtype, torch.channels_last, 2, s.runs)
        return _verdict(ctx, "inference", plain / cl, f"{cl:.2f} vs {plain:.2f} ms/image")

    report.measure(SPEED, "channels_last, train", f"{cfg}, batch {bs}, {_precision_label(ctx)}", train)
    report.measure(SPEED, "channels_last, inference", f"{cfg}, batch {max(s.infer_batches)}, fused", inference)
    _free(ctx)


def _verdict(ctx: Context, use: str, speedup: float, figures: str) -> tuple[str, str, dict]:
    key = (ctx.device.type, use)
    faster = speedup > 1.05
    advice = "" if not ctx.settings.advise else "; the default already" if faster == CHANNELS_LAST[key] else \
        f"; set CHANNELS_LAST[{key}] = {faster} in engine/device.py"
    return f"x{speedup:.2f} ({figures}){advice}", "measured", {"speedup": speedup}


def bf16_row(report: Report, ctx: Context, rates: dict[tuple[str, int], StepRate]) -> None:
    s, cfg, bs = ctx.settings, ctx.settings.probe_cfg, ctx.settings.probe_batch
    if not ctx.cuda:
        report.add(SPEED, "AMP bf16 vs fp16, train", f"{cfg}, batch {bs}", NO_CUDA, "skipped")
        return

    def run():
        fp16 = rates.get((cfg, bs)) or ctx.train_rate(cfg, bs, amp_precision(ctx.device, True, "fp16"))
        bf16 = ctx.train_rate(cfg, bs, amp_precision(ctx.device, True, "bf16"))
        return (f"bf16 {_rate(bf16.images_per_s)} vs fp16 {_rate(fp16.images_per_s)} img/s "
                f"(x{bf16.images_per_s / fp16.images_per_s:.2f}); peak {bf16.peak_gib:.2f} vs {fp16.peak_gib:.2f} GiB",
                "measured",
                {"bf16_img_per_s": bf16.images_per_s, "fp16_img_per_s": fp16.images_per_s})
    report.measure(SPEED, "AMP bf16 vs fp16, train", f"{cfg}, batch {bs}, {s.img_size} px", run)
    _free(ctx)


def compile_rows(report: Report, ctx: Context, rates: dict[tuple[str, int], StepRate]) -> None:
    """torch.compile for training and inference: the speed-up on a GPU (inductor); on a CPU the
    wiring alone (the eager backend), since CPU code generation takes minutes."""
    s, cfg, bs = ctx.settings, ctx.settings.compile_cfg, ctx.settings.probe_batch
    precision = amp_precision(ctx.device, True, "fp16")
    backend = s.compile_backend

    def train():
        base = rates.get((cfg, bs)) or ctx.train_rate(cfg, bs, precision)
        comp = ctx.train_rate(cfg, bs, precision, compile_backend=backend)
        return _compile_result(ctx, comp.images_per_s / base.images_per_s,
                               f"{_rate(comp.images_per_s)} vs {_rate(base.images_per_s)} img/s", comp.warmup_s)

    def inference():
        dtype, b = (torch.float16 if ctx.cuda else torch.float32), max(s.infer_batches)
        fmt = memory_format(ctx.device, "inference")
        model = ctx.model(cfg).fuse().eval().to(device=ctx.device, dtype=dtype, memory_format=fmt)
        x = torch.rand(b, 3, s.img_size, s.img_size, device=ctx.device, dtype=dtype).contiguous(memory_format=fmt)
        plain = time_forward_ms(model, x, 2, s.runs)
        compiled = compile_model(copy.deepcopy(model), True, backend)
        t0 = time.perf_counter()
        with torch.inference_mode():
            diff = float((compiled(x)[0].float() - model(x)[0].float()).abs().max())
        compile_s = time.perf_counter() - t0
        comp = time_forward_ms(compiled, x, 1, s.runs)
        return _compile_result(ctx, plain / comp, f"{comp:.2f} vs {plain:.2f} ms/image; outputs differ by "
                               f"{diff:.1e} at most", compile_s)

    report.measure(SPEED, "torch.compile, train", f"{cfg}, batch {bs}, {_precision_label(ctx)}, {backend}", train)
    report.measure(SPEED, "torch.compile, inference", f"{cfg}, batch {max(s.infer_batches)}, fused, {backend}",
                   inference)
    _free(ctx)


def _compile_result(ctx: Context, speedup: float, figures: str, compile_s: float) -> tuple[str, str, dict]:
    if not ctx.cuda:  # the eager backend generates no code: its timings are not a speed-up
        return f"wiring ok (eager backend); speed-up: {NO_CUDA}", "pass", {}
    return f"x{speedup:.2f} ({figures}); first steps incl. compiling {compile_s:.0f} s", "measured", \
        {"speedup": speedup, "compile_s": compile_s}


def tensorrt_row(report: Report, ctx: Context) -> None:
    """export.py --include engine --half of the tests' checkpoint (else an untrained gp-n-seg):
    the build time, model latency at batch 1 against PyTorch FP16 on the same GPU, and val.py's
    box AP of both on the data the checkpoint was trained on (else coco-mini val)."""
    s = ctx.settings
    setting = f"FP16 engine, batch 1, {s.img_size} px, from {'the tests checkpoint' if _overfit(ctx) else 'untrained gp-n-seg'}"
    if not ctx.cuda:
        report.add(SPEED, "TensorRT engine", setting, NO_CUDA, "skipped")
        return
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        report.add(SPEED, "TensorRT engine", setting, "skipped: tensorrt is not installed", "skipped")
        return

    def run():
        from engine.eval.evaluator import evaluate
        from engine.export.exporter import export
        from engine.export.options import ExportOptions
        from engine.infer.backends import load_backend
        from utils.io import save_checkpoint

        src, data = _overfit(ctx) or (None, ctx.data)
        if src is None:
            model = build_model("gp-n-seg", num_classes=80)
            src = save_checkpoint({"model": model.state_dict(), "ema": None,
                                   "config": {"model": model.yaml, "nc": 80, "img_size": s.img_size}},
                                  ctx.work / "trt/untrained.pt")
        t0 = time.perf_counter()
        (e,) = export(ExportOptions(weights=str(src), include=("engine",), half=True, device=str(ctx.device.index or 0),
                                    img_size=s.img_size, out=str(ctx.work / "trt/model.onnx")))
        build_s = time.perf_counter() - t0
        engine, torch_b = load_backend(e.path, ctx.device), load_backend(src, ctx.device, half=True)
        x = torch.zeros(1, 3, s.img_size, s.img_size, device=ctx.device)
        ms, ms_pt = (time_forward_ms(b, x, warmup=3, runs=s.runs) for b in (engine, torch_b))
        loader, dataset = build_dataloader(data, "val", s.img_size, 1, workers=0, pin_memory=True)
        ap, ap_pt = (evaluate(b, loader, dataset, ctx.device).box["AP"] for b in (engine, torch_b))
        return (f"build {build_s:.0f} s; {ms:.2f} ms/image vs PyTorch FP16 {ms_pt:.2f} (x{ms_pt / ms:.2f}); "
                f"box AP {ap:.3f} vs {ap_pt:.3f}", "measured",
                {"build_s": build_s, "ms_per_image": ms, "pytorch_ms_per_image": ms_pt, "box_ap": ap, "pytorch_box_ap": ap_pt})
    report.measure(SPEED, "TensorRT engine", setting, run)
    _free(ctx)


def _overfit(ctx: Context):
    """(best.pt, its data config) of the cuda tests' trained checkpoint, or None before they ran."""
    best = ctx.work / "cuda/overfit/weights/best.pt"
    data = ctx.work / "cuda/subset6.yaml"
    return (best, load_data_config(data)) if best.is_file() and data.is_file() else None


def _free(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.empty_cache()

"""Precision and speed settings of a device, shared by training and inference: AMP dtype and
GradScaler, cuDNN benchmark, TF32, channels_last, torch.compile, and CUDA out-of-memory as one
line that names the batch size and the memory."""
from __future__ import annotations

import ctypes
import logging
import sys
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

LOG = logging.getLogger("gradpath.device")

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Memory format by (device type, use), chosen from measurements only (benchmarks/gpu_check.py's
# channels_last rows, benchmarks/train_step.py on a CPU): oneDNN's fused inference gains from
# channels_last on CPUs; GPUs keep PyTorch's default until their rows say otherwise.
CHANNELS_LAST = {("cpu", "inference"): True, ("cpu", "train"): False,
                 ("cuda", "inference"): False, ("cuda", "train"): False}


@dataclass(frozen=True)
class Precision:
    """Mixed precision of a training run: autocast on or off, in which dtype, and whether the
    loss needs scaling (float16 only: bfloat16 has float32's exponent range)."""

    amp: bool = False
    dtype: torch.dtype = torch.float16

    @property
    def scaled(self) -> bool:
        return self.amp and self.dtype == torch.float16

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.scaled)


def amp_precision(device: torch.device, amp: bool, amp_dtype: str = "fp16") -> Precision:
    """--amp fp16|bf16 (and --no-amp): autocast on CUDA only; CPU training stays in float32."""
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"--amp {amp_dtype}: expected one of {', '.join(AMP_DTYPES)}")
    on = bool(amp) and device.type == "cuda"
    if on and amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --amp fp16")
    return Precision(on, AMP_DTYPES[amp_dtype])


@contextmanager
def elementwise_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread on a CPU for a training step's elementwise bookkeeping (the optimizer
    step, the EMA update): hundreds of small tensors, each of whose parallel regions costs more
    than it saves, all the more when the loader's workers hold a core, and elementwise results do
    not depend on the thread count. Reductions (the loss, gradient norms) keep the run's threads:
    their sums do depend on it. On a GPU nothing changes."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def reuse_freed_memory(device: torch.device) -> bool:
    """CPU training and inference: glibc serves every block above its mmap threshold (at most 32
    MB: a batch's activations and their gradients) with a fresh mmap and unmaps it when freed, so
    every step faults in and zeroes gigabytes again. Blocks from the heap instead, and freed memory
    kept for reuse: yolov5n at 640, batch 16, 2 cores, 2 epochs went 49.0 -> 31.9 s wall, 26.6 ->
    3.1 s in the kernel, 12.9M -> 1.2M page faults, peak RSS 3.9 -> 4.2 GB
    (benchmarks/train_speed.py); the PyTorch and TorchScript inference backends apply it too.
    Process-wide (the loader's forked workers inherit it); only
    on Linux with glibc, only for a CPU device (a GPU's activations are not malloc's). Returns
    whether it was applied."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: leave their allocator alone
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20)))


def leave_cpu_to_runtime(device: torch.device) -> None:
    """torch on one thread in a process whose model runs in ONNX Runtime or OpenVINO on the CPU:
    torch then only letterboxes and postprocesses, and its pool, woken for those few ms, kept
    spinning into the runtime's call and took its cores (gp-n-seg OpenVINO INT8 end to end on
    2 cores: 27-28 ms a frame with one torch thread, 29-41 ms with two). Process-wide, as the
    runtime's own pool is."""
    if device.type == "cpu":
        torch.set_num_threads(1)


@contextmanager
def torch_threads_kept():
    """torch's CPU thread count as it was on entry, whatever ran inside (a runtime backend loaded
    for a check puts torch on one thread: leave_cpu_to_runtime)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def configure_cuda(device: torch.device, fixed_shapes: bool) -> dict[str, object]:
    """cuDNN autotuning when every batch has the same shape (it re-tunes for each new shape), and
    TF32 matmuls and convolutions on Ampere and newer. Process-wide torch switches; returns what
    was set."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = bool(fixed_shapes)
    major, minor = torch.cuda.get_device_capability(device)
    tf32 = major >= 8
    if tf32:
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9 API
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return {"cudnn_benchmark": bool(fixed_shapes), "tf32": tf32, "capability": f"{major}.{minor}"}


def memory_format(device: torch.device, use: str, channels_last: bool | None = None) -> torch.memory_format:
    """channels_last where the table above (or an explicit choice) says so; use: 'train' or 'inference'."""
    if channels_last is None:
        channels_last = CHANNELS_LAST.get((device.type, use), False)
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_model(model: nn.Module, enabled: bool, backend: str = "inductor") -> nn.Module:
    """torch.compile in place (Module.compile): the same object, the same state_dict keys, so
    checkpoints, EMA and DDP see the plain model. Compilation happens at the first call."""
    if enabled:
        model.compile(backend=backend)
    return model


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message is one line with the batch size and the memory."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a cuBLAS/cuDNN allocation failure reported as a RuntimeError."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("CUDA out of memory" in text or "ALLOC_FAILED" in text)


def out_of_memory_message(device: torch.device, batch_size: int, img_size: int, what: str = "training") -> str:
    """One line: what ran out, at which batch size, with the device's memory figures."""
    head = f"CUDA out of memory {what} at --batch-size {batch_size} --img-size {img_size}"
    if device.type != "cuda":
        return f"{head}; lower --batch-size"
    try:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        peak = torch.cuda.max_memory_reserved(device) / 2**30
        name = torch.cuda.get_device_name(device)
        where = f" on {device} ({name}, {total:.1f} GiB total, {peak:.1f} GiB reserved by this process at the peak)"
    except RuntimeError:  # the device is in a bad state: the batch size alone still helps
        where = f" on {device}"
    return f"{head}{where}; lower --batch-size (or --img-size)"

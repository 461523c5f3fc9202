"""What a GPU user expects, checked on the CPU: --device parsing and CUDA selection errors in one
line, AMP dtypes and loss scaling, TF32 and cuDNN settings, the memory-format policy, pinned
batches, torch.compile wiring, CUDA out-of-memory as one line, and a non-finite loss that leaves
the model exactly as it was; CPU training reusing freed memory instead of faulting it in again."""
from __future__ import annotations

import copy
import sys

import pytest
import torch

import train
from conftest import ROOT, ema_of
from engine.device import (CHANNELS_LAST, Precision, amp_precision, compile_model, configure_cuda,
                           is_out_of_memory, memory_format, out_of_memory_message, reuse_freed_memory)
from utils.dist import DistInfo, select_device
from utils.structures import Batch


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs (selection only: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# --- --device ---------------------------------------------------------------------------------

def test_device_specs_select_the_named_gpu(two_gpus):
    assert select_device("0") == torch.device("cuda", 0)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device(" 1 ") == torch.device("cuda", 1)
    assert select_device("") == torch.device("cuda", 0) and select_device("cuda") == torch.device("cuda", 0)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("0,1", several=True) == torch.device("cuda", 0)  # inference: the first
    # under torchrun every rank takes its own listed device
    assert select_device("0,1", DistInfo(rank=1, local_rank=1, world_size=2)) == torch.device("cuda", 1)
    assert select_device("", DistInfo(rank=1, local_rank=1, world_size=2)) == torch.device("cuda", 1)


@pytest.mark.parametrize("spec,info,message", [
    ("0,1", DistInfo(), "one process trains on one GPU; for 2 GPUs run torchrun --nproc_per_node 2 train.py"),
    ("2", DistInfo(), "no CUDA device 2 (2 visible: 0, 1)"),
    ("0,3", DistInfo(), "no CUDA device 3"),
    ("0,0", DistInfo(), "a GPU is listed twice"),
    ("gpu", DistInfo(), "expected cpu, a CUDA index such as 0, or a list such as 0,1,2,3"),
    ("1", DistInfo(rank=1, local_rank=1, world_size=2), "1 GPU(s) for local rank 1; start at most 1 processes"),
    ("", DistInfo(rank=2, local_rank=2, world_size=3), "2 GPU(s) for local rank 2"),
])
def test_device_errors_are_one_line(two_gpus, spec, info, message):
    with pytest.raises(ValueError) as e:
        select_device(spec, info)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(f"--device {spec or 'auto'}")


def test_no_cuda_says_why_in_one_line(no_gpu):
    assert select_device("") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device 0: .*(no CUDA|not available).*; use --device cpu$"):
        select_device("0")


def test_train_py_reports_a_missing_gpu_in_one_line(no_gpu, capsys, tmp_path):
    assert train.main(["--device", "0", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: --device 0:") and "use --device cpu" in err[0]


def test_train_py_precision_and_speed_flags():
    opt = train.parse_args(["--amp", "bf16", "--channels-last", "--compile"])
    assert (opt.amp, opt.amp_dtype, opt.channels_last, opt.compile) == (True, "bf16", True, True)
    opt = train.parse_args(["--no-amp"])
    assert (opt.amp, opt.amp_dtype, opt.channels_last, opt.compile) == (False, "fp16", False, False)


# --- precision and backend settings ----------------------------------------------------------------

def test_amp_only_on_cuda_and_loss_scaling_only_for_fp16(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    gpu = torch.device("cuda", 0)
    assert amp_precision(torch.device("cpu"), True, "fp16") == Precision(False, torch.float16)
    fp16, bf16 = amp_precision(gpu, True, "fp16"), amp_precision(gpu, True, "bf16")
    assert fp16 == Precision(True, torch.float16) and fp16.scaled
    assert bf16 == Precision(True, torch.bfloat16) and not bf16.scaled
    assert not amp_precision(gpu, False, "fp16").amp  # --no-amp
    with pytest.raises(ValueError, match="--amp fp8: expected one of fp16, bf16"):
        amp_precision(gpu, True, "fp8")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
    with pytest.raises(ValueError, match="--amp bf16: Tesla V100 has no bfloat16 support; use --amp fp16"):
        amp_precision(gpu, True, "bf16")


@pytest.fixture
def backend_flags():
    """Restores the process-wide torch flags configure_cuda sets."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[1:]


@pytest.mark.parametrize("capability,tf32", [((9, 0), True), ((8, 0), True), ((7, 5), False)])
def test_tf32_from_ampere_and_cudnn_benchmark_for_fixed_shapes(monkeypatch, backend_flags, capability, tf32):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert configure_cuda(torch.device("cpu"), True) == {} and torch.backends.cuda.matmul.fp32_precision == "ieee"
    got = configure_cuda(torch.device("cuda", 0), fixed_shapes=True)
    assert got["tf32"] == tf32 and torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")
    configure_cuda(torch.device("cuda", 0), fixed_shapes=False)  # multi-scale, rect: shapes vary
    assert not torch.backends.cudnn.benchmark


def test_channels_last_only_where_measured_faster():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert memory_format(cpu, "inference") == torch.channels_last  # measured: 2-3x on the CPU
    assert memory_format(gpu, "inference") == torch.contiguous_format  # not measured yet
    assert memory_format(gpu, "train") == torch.contiguous_format
    assert memory_format(gpu, "train", True) == torch.channels_last  # --channels-last
    assert set(CHANNELS_LAST) == {(d, u) for d in ("cpu", "cuda") for u in ("train", "inference")}


def test_batches_pin_through_the_dataloader_pinning(monkeypatch):
    """torch's pin_memory thread only pins objects it knows or that have pin_memory(): every
    tensor of a Batch must come back pinned (pinning itself needs CUDA: recorded here)."""
    from torch.utils.data._utils.pin_memory import pin_memory as loader_pin

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t) or t.clone())
    b = Batch(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), torch.tensor([0, 1]), torch.tensor([3, 4]),
              torch.rand(2, 4), torch.zeros((2, 2, 2), dtype=torch.uint8), [1, 2], ["a", "b"], [(8, 8)] * 2,
              [((1.0, 1.0), (0.0, 0.0))] * 2)
    out = loader_pin(b)
    assert isinstance(out, Batch) and len(pinned) == 5
    assert all(torch.equal(a, c) and a is not c for a, c in zip(
        (b.images, b.batch_idx, b.classes, b.boxes, b.masks), (out.images, out.batch_idx, out.classes, out.boxes, out.masks)))
    assert out.image_ids == b.image_ids and out.ratio_pads == b.ratio_pads


def test_compile_keeps_the_module_its_state_dict_and_its_outputs(small_cfg):
    """In-place compile (the 'eager' backend: the wiring, not the code generation)."""
    from models.model import build_model

    torch.manual_seed(0)
    model = build_model(small_cfg("anchor_free")).train()
    plain = copy.deepcopy(model)
    x = torch.rand(2, 3, 64, 64)
    assert compile_model(model, True, backend="eager") is model
    assert list(model.state_dict()) == list(plain.state_dict())
    out, ref = model(x), plain(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out.preds, ref.preds))
    (sum(p.sum() for p in out.preds) + out.proto.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


# --- failure paths -------------------------------------------------------------------------------

def test_out_of_memory_is_recognised_and_described_in_one_line():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    text = out_of_memory_message(torch.device("cpu"), 64, 640)
    assert text == "CUDA out of memory training at --batch-size 64 --img-size 640; lower --batch-size"


@pytest.mark.slow
def test_out_of_memory_ends_train_py_in_one_line_and_the_run_folder_stays_usable(small_cfg, tmp_path, capsys,
                                                                                  monkeypatch):
    import yaml

    import engine.train.build

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(small_cfg("anchor")))
    args = ["--cfg", str(cfg), "--epochs", "1", "--img-size", "64", "--batch-size", "12", "--workers", "0",
            "--device", "cpu", "--noval", "--project", str(tmp_path / "runs"), "--name", "oom"]

    def oom_criterion(*a, **k):
        def raise_oom(*a, **k):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return raise_oom

    with monkeypatch.context() as m:
        m.setattr(engine.train.build, "build_criterion", oom_criterion)
        assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("train.py: error: CUDA out of memory training at --batch-size 12 "
                                            "--img-size 64; lower --batch-size")
    run = tmp_path / "runs/oom"
    assert (run / "config.yaml").is_file() and not list(run.rglob("*.pt")) and not list(run.rglob("*.tmp*"))
    # the same folder takes the run again, with what the message suggests
    assert train.main([*args[:7], "6", *args[8:], "--exist-ok"]) == 0
    assert (run / "weights/last.pt").is_file()


def test_a_non_oom_runtime_error_is_not_disguised(make_trainer):
    trainer = make_trainer("anchor")

    def broken(*a, **k):
        raise RuntimeError("shape mismatch in the head")

    trainer.criterion = broken
    with pytest.raises(RuntimeError, match="^shape mismatch in the head$"):
        trainer.fit()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_a_non_finite_loss_skips_the_step_and_leaves_the_model_as_it_was(make_trainer, kind):
    """Activations that overflow (as float16 ones do under AMP; here an infinite weight) make
    the loss non-finite: no parameter, BatchNorm statistic, optimizer or EMA state may move,
    and the next sane batch trains."""
    trainer = make_trainer(kind)
    batch = next(iter(trainer.loader))
    conv = trainer.model.layers[0].conv
    sane = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("inf")
    state = copy.deepcopy(trainer.model.state_dict())
    assert trainer.train_step(batch, 0) == {} and trainer.skipped_steps == 1
    after = trainer.model.state_dict()
    moved = [k for k in state if not torch.equal(state[k], after[k]) and not (
        state[k].is_floating_point() and torch.isnan(state[k]).all() and torch.isnan(after[k]).all())]
    assert not moved, f"a skipped step changed {moved[:5]}"
    assert ema_of(trainer).updates == 0 and not trainer.optimizer.state
    with torch.no_grad():
        conv.weight.copy_(sane)
    terms = trainer.train_step(batch, 0)
    assert terms and all(torch.isfinite(torch.tensor(v)) for v in terms.values()) and trainer.bad_steps == 0
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers() if b.is_floating_point())


@pytest.mark.slow
def test_torchrun_with_one_process_takes_the_distributed_path(root, small_cfg, subset_data, tmp_path):
    """One process under torchrun still initialises the process group and wraps DDP (NCCL on a
    GPU, gloo here), so one GPU can check the multi-GPU code; the checkpoint has no 'module.'."""
    import os
    import subprocess
    import sys

    import yaml

    from utils.io import load_checkpoint

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(small_cfg("anchor")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29531",
           str(root / "train.py"), "--cfg", str(cfg), "--data", str(subset_data(4)), "--epochs", "1",
           "--img-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--sync-bn", "--noval",
           "--project", str(tmp_path / "runs")]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed: gloo backend, rank 0 of 1 on cpu" in r.stderr
    state = load_checkpoint(tmp_path / "runs/exp/weights/last.pt")["model"]
    assert not any(k.startswith("module.") for k in state)


FAULTS_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from engine.device import reuse_freed_memory
applied = reuse_freed_memory(torch.device("cpu")) if sys.argv[1] == "on" else False
if sys.argv[1] == "backend":  # detect.py's way: a checkpoint loaded for CPU inference, nothing else asked
    from engine.infer.backends import load_backend
    load_backend(sys.argv[2], torch.device("cpu"))
for _ in range(8):  # the first 64 MB blocks: faulted in either way (glibc's heap settles in 2-4 of them)
    torch.ones(16 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # freed and asked for again, as a training step's activations are
    torch.ones(16 << 20).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_training_and_inference_reuse_freed_blocks_instead_of_faulting_them_in_again():
    import subprocess

    def faults(*mode: str) -> tuple[bool, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT.format(root=str(ROOT)), *mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] == "True", int(out[1])

    applied, reused = faults("on")
    if not applied:
        pytest.skip("not glibc: the allocator is left alone")
    _, default = faults("off")
    assert default >= 5 * (16 << 20) * 4 // 4096 * 0.9  # glibc by default: every 64 MB block mapped afresh
    assert reused < default / 4  # at most one of the five faulted in again (the heap may still grow once)
    assert not reuse_freed_memory(torch.device("meta"))  # only a CPU device's memory is malloc's
    # CPU inference through a PyTorch checkpoint keeps freed blocks too
    _, inference = faults("backend", str(ROOT / "tests/fixtures/checkpoint-format1-tiny.pt"))
    assert inference < default / 4

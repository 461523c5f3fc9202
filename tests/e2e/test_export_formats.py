"""Every export format written, read back through its inference backend and compared with PyTorch
on real images (not the image the export checked itself on); metadata inside each file; hostile
inputs answered in one line with nothing half-written."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.export.checks import ExportError, check_input, compare_detections
from engine.export.exporter import ExportOptions, export
from engine.infer.backends import load_backend
from models.model import build_model
from tests.spread import spread_head
from utils.errors import CheckpointError
from utils.io import save_checkpoint
from utils.postprocess import end2end_postprocess, postprocess

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "datasets/coco-mini/images").iterdir())
CPU = torch.device("cpu")
SIZE = 160


@pytest.fixture(scope="module")
def small(tmp_path_factory, small_cfg) -> Path:
    """A small segmentation checkpoint (anchor-free head) with spread-out scores, saved as train.py does."""
    torch.manual_seed(0)
    model = build_model(small_cfg("anchor_free")).eval()
    spread_head(model, check_input(SIZE, 1, IMAGES[0])[0])
    names = [f"c{i}" for i in range(80)]
    ckpt = {"model": model.state_dict(), "ema": None,
            "config": {"model": model.yaml, "nc": 80, "names": names, "category_ids": list(range(1, 81)),
                       "img_size": SIZE}}
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("small") / "small.pt")


def inputs(size: int, n: int = 2):
    parts = [check_input(size, 1, p) for p in IMAGES[1:1 + n]]
    return torch.cat([p[0] for p in parts]), [p[1] for p in parts], [p[2] for p in parts]


def detections(backend, x, orig, rps, conf=0.25, iou=0.45, k=100):
    out = backend(x)
    if backend.end2end:
        return end2end_postprocess(out, tuple(x.shape[-2:]), orig, rps)
    return postprocess(out.pred, out.proto, tuple(x.shape[-2:]), orig, rps, conf, iou, k)


@pytest.mark.slow
def test_every_format_of_a_small_model_equals_pytorch(small, tmp_path):
    opt = ExportOptions(weights=str(small), include=("onnx", "openvino", "torchscript"), int8=True, dynamic=True,
                        out=str(tmp_path / "m.onnx"))
    files = export(opt)
    assert [(e.format, e.precision) for e in files] == [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8"),
                                                        ("torchscript", "fp32")]
    assert {p.name for p in tmp_path.iterdir()} == {"m.onnx", "m_openvino_model", "m_int8_openvino_model", "m.torchscript"}
    x, orig, rps = inputs(SIZE)
    ref_backend = load_backend(small, CPU)
    ref = ref_backend(x)
    for e in files:
        b = load_backend(e.path, CPU)
        assert (b.names, b.category_ids, b.stride, b.img_size, b.task, b.end2end) == (
            ref_backend.names, list(range(1, 81)), 32, SIZE, "segment", False), e.path
        out = b(x)
        assert out.pred.shape == ref.pred.shape and out.proto.shape == ref.proto.shape
        if e.precision == "fp32":
            assert (out.pred - ref.pred).abs().max() <= 1e-4 * max(1.0, float(ref.pred.abs().max())), e.path
            assert (out.proto - ref.proto).abs().max() <= 1e-3, e.path
        else:  # INT8 runs and keeps most of PyTorch's detections
            for r, g in zip(detections(ref_backend, x, orig, rps), detections(b, x, orig, rps)):
                d = compare_detections(r, g)
                assert d.n_ref > 0 and d.unmatched <= 0.5 * d.n_ref, d.largest


@pytest.mark.slow
def test_end2end_onnx_and_openvino_equal_the_pytorch_postprocess(small, tmp_path):
    files = export(ExportOptions(weights=str(small), include=("onnx", "openvino"), nms=True, conf_thres=0.5,
                                 iou_thres=0.5, topk_all=60, simplify=True, out=str(tmp_path / "e2e.onnx")))
    x, orig, rps = inputs(SIZE, 3)
    ref = detections(load_backend(small, CPU), x, orig, rps, 0.5, 0.5, 60)
    for e in files:
        b = load_backend(e.path, CPU)
        assert b.end2end and b.meta.topk == 60 and b.meta.conf_thres == 0.5
        for r, g in zip(ref, detections(b, x, orig, rps)):
            d = compare_detections(r, g)
            assert d.n_ref > 0 and d.ok(), (e.path, d.largest)


@pytest.mark.slow
def test_official_yolov5n_in_every_format(official, tmp_path):
    """The real release: raw ONNX, end-to-end ONNX, OpenVINO FP32 and INT8, TorchScript against
    PyTorch on real images at 640; INT8 keeps most detections."""
    src = tmp_path / "yolov5n.pt"
    shutil.copy(official / "yolov5n.pt", src)
    files = export(ExportOptions(weights=str(src), img_size=640, include=("onnx", "openvino", "torchscript"), int8=True,
                                 fraction=0.5))
    files += export(ExportOptions(weights=str(src), img_size=640, include=("onnx",), nms=True, out=str(tmp_path / "e2e.onnx")))
    x, orig, rps = inputs(640, 3)
    torch_b = load_backend(src, CPU)
    ref = detections(torch_b, x, orig, rps)
    assert sum(len(r) for r in ref) >= 10
    for e in files:
        b = load_backend(e.path, CPU)
        assert b.names == torch_b.names and b.category_ids[:3] == [1, 2, 3] and b.task == "detect"
        for r, g in zip(ref, detections(b, x, orig, rps)):
            d = compare_detections(r, g)
            if e.precision == "int8":
                assert d.unmatched <= 0.3 * max(d.n_ref, 4) and d.max_score_diff < 0.1, (e.path, d.largest)
            else:
                assert d.ok(), (e.path, d.largest)


@pytest.mark.slow
def test_official_yolov5n_seg_end2end_masks(official, tmp_path):
    """The official segmentation architecture (converted in memory, heads spread as above): the
    end-to-end ONNX and OpenVINO masks equal our postprocess."""
    from engine.checkpoint import model_from_checkpoint, read_weights

    ckpt = read_weights(official / "yolov5n-seg.pt")
    model = model_from_checkpoint(ckpt).eval()
    spread_head(model, check_input(320, 1, IMAGES[0])[0], obj=(-3.0, 1.0), cls=(-5.0, 1.0))  # tens of boxes, not hundreds
    src = save_checkpoint({**ckpt, "model": model.state_dict(), "ema": None}, tmp_path / "v5seg.pt")
    files = export(ExportOptions(weights=str(src), img_size=320, include=("onnx", "openvino"), nms=True,
                                 conf_thres=0.5, topk_all=100))
    x, orig, rps = inputs(320, 2)
    ref = detections(load_backend(src, CPU), x, orig, rps, 0.5, 0.45, 100)
    assert all(0 < len(r) < 100 for r in ref)  # below the top-k cut: every detection must match
    for e in files:
        b = load_backend(e.path, CPU)
        assert b.task == "segment" and b.end2end
        for r, g in zip(ref, detections(b, x, orig, rps)):
            d = compare_detections(r, g)
            assert d.n_ref > 0 and d.ok(), (e.path, d.largest)


def test_truncated_onnx_is_one_line(small, tmp_path):
    bad = tmp_path / "cut.onnx"
    export(ExportOptions(weights=str(small), out=str(bad)))
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut.onnx: not a readable ONNX model") as e:
        load_backend(bad, CPU)
    assert "\n" not in str(e.value)


def test_openvino_folder_without_bin(small, tmp_path):
    (folder := tmp_path / "m_openvino_model").mkdir()
    (folder / "m.xml").write_text("<net/>")
    with pytest.raises(CheckpointError, match=r"m.bin are missing"):
        load_backend(folder, CPU)


def test_engine_without_cuda_is_one_line(small, tmp_path):
    fake = tmp_path / "m.engine"
    fake.write_bytes(b"\0" * 64)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="NVIDIA GPU only; this machine has no CUDA device"):
            load_backend(fake, CPU)
        with pytest.raises(ExportError, match="--include engine: TensorRT builds engines on an NVIDIA GPU only"):
            export(ExportOptions(weights=str(small), include=("engine",), out=str(tmp_path / "e.onnx")))
        assert not (tmp_path / "e.engine").exists()
    with pytest.raises(CheckpointError, match="NVIDIA GPU only"):
        load_backend(fake, CPU)  # with a GPU too, when it is not the device asked for


def test_unwritable_folder_fails_before_writing(small, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: a read-only filesystem instead
        folder = Path("/sys/kernel/gradpath-export")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    with pytest.raises(ExportError, match="cannot write the export there") as e:
        export(ExportOptions(weights=str(small), out=str(folder / "m.onnx")))
    assert "\n" not in str(e.value) and not (folder / "m.onnx").exists()


def test_failed_check_keeps_the_users_file(small, tmp_path, monkeypatch):
    """A check that fails deletes nothing of the user's and leaves no temporary file behind."""
    import engine.export.exporter as exporter

    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"the user's own file")
    (folder := tmp_path / "m_openvino_model").mkdir()
    (folder / "m.xml").write_text("user's")
    monkeypatch.setattr(exporter, "RAW_TOL", {"fp32": -1.0})
    for include in ("onnx", "openvino"):
        with pytest.raises(ExportError, match="check against PyTorch failed"):
            export(replace(ExportOptions(weights=str(small), out=str(dest)), include=(include,)))
    assert dest.read_bytes() == b"the user's own file" and (folder / "m.xml").read_text() == "user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_openvino_model"]

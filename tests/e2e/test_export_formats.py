"""Every export format of a small model, written once per module, read back through its inference
backend and compared with PyTorch on real images (not the image the export checked itself on);
metadata inside each file; detect.py's predictor on an end-to-end graph; export.py's options
refused at entry; hostile inputs answered in one line with nothing half-written."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import pytest
import torch

import export as export_cli
from conftest import ROOT
from engine.export.checks import CheckFailed, ExportError, check_input, compare_detections
from engine.export.exporter import Exported, export
from engine.export.options import ExportOptions
from engine.infer.backends import load_backend
from engine.infer.predictor import PredictOptions, Predictor
from engine.infer.sources import Frame
from models.model import build_model
from tests.spread import spread_head
from utils.errors import CheckpointError
from utils.io import save_checkpoint
from utils.postprocess import to_detections

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


@pytest.fixture(scope="module")
def raw_files(small, tmp_path_factory) -> list[Exported]:
    """ONNX, OpenVINO FP32 and INT8 (calibrated on the bundled set), TorchScript: raw outputs, dynamic."""
    out = tmp_path_factory.mktemp("raw") / "m.onnx"
    threads = torch.get_num_threads()
    files = export(ExportOptions(weights=str(small), include=("onnx", "openvino", "torchscript"), int8=True,
                                 dynamic=True, out=str(out)))
    # its checks ran the files in ONNX Runtime and OpenVINO (which put torch on one thread); the caller
    # of export() gets its thread count back
    assert torch.get_num_threads() == threads
    return files


@pytest.fixture(scope="module")
def e2e_files(small, tmp_path_factory) -> list[Exported]:
    """ONNX and OpenVINO end-to-end graphs (simplified) at conf 0.5, NMS IoU 0.5, top 60."""
    out = tmp_path_factory.mktemp("e2e") / "e2e.onnx"
    return export(ExportOptions(weights=str(small), include=("onnx", "openvino"), nms=True, conf_thres=0.5,
                                iou_thres=0.5, topk_all=60, simplify=True, out=str(out)))


def inputs(size: int, n: int = 2):
    parts = [check_input(size, 1, p) for p in IMAGES[1:1 + n]]
    return torch.cat([p[0] for p in parts]), [p[1] for p in parts], [p[2] for p in parts]


def detections(backend, x, orig, rps, conf=0.25, iou=0.45, k=100):
    return to_detections(backend(x), tuple(x.shape[-2:]), orig, rps, conf, iou, k)


@pytest.mark.slow
def test_every_format_of_a_small_model_equals_pytorch(small, raw_files):
    assert [(e.format, e.precision) for e in raw_files] == [("onnx", "fp32"), ("openvino", "fp32"),
                                                            ("openvino", "int8"), ("torchscript", "fp32")]
    folder = raw_files[0].path.parent
    assert {p.name for p in folder.iterdir()} == {"m.onnx", "m_openvino_model", "m_int8_openvino_model", "m.torchscript"}
    x, orig, rps = inputs(224)  # not the export's size: the dynamic axes are real
    ref_backend = load_backend(small, CPU)
    ref = ref_backend(x)
    for e in raw_files:
        b = load_backend(e.path, CPU)
        assert b.meta == replace(ref_backend.meta, category_ids=tuple(range(1, 81))), e.path
        assert (b.meta.img_size, b.meta.task, b.meta.end2end) == (SIZE, "segment", False)
        out = b(x)
        assert out.pred.shape == ref.pred.shape and out.proto.shape == ref.proto.shape
        if e.format == "openvino":  # protos leave the IR channels-last, read back as (B, nm, h, w) views
            compiled, _ = b.requests[tuple(x.shape)]  # compiled at this input's shape (the IR's is dynamic)
            assert b.nhwc_protos and compiled.outputs[1].get_partial_shape()[3].get_length() == out.proto.shape[1]
            assert not out.proto.is_contiguous() and out.proto.permute(0, 2, 3, 1).is_contiguous()
        if e.format in ("onnx", "openvino"):
            assert torch.get_num_threads() == 1  # engine.device.leave_cpu_to_runtime: the cores are the runtime's
        if e.precision == "fp32":
            assert (out.pred - ref.pred).abs().max() <= 1e-4 * max(1.0, float(ref.pred.abs().max())), e.path
            assert (out.proto - ref.proto).abs().max() <= 1e-3, e.path
            for r, g in zip(detections(ref_backend, x, orig, rps), detections(b, x, orig, rps)):
                d = compare_detections(r, g)  # the masks too, decoded from the channels-last protos
                assert d.n_ref > 0 and d.unmatched == 0 and d.masks and d.min_mask_iou >= 0.98, (e.path, d)
        else:  # INT8 runs and keeps most of PyTorch's detections
            for r, g in zip(detections(ref_backend, x, orig, rps), detections(b, x, orig, rps)):
                d = compare_detections(r, g)
                assert d.n_ref > 0 and d.unmatched <= 0.5 * d.n_ref, d.largest


@pytest.mark.slow
def test_end2end_onnx_and_openvino_equal_the_pytorch_postprocess(small, e2e_files):
    x, orig, rps = inputs(SIZE, 3)  # three images: the graph's batch axis is free
    ref = detections(load_backend(small, CPU), x, orig, rps, 0.5, 0.5, 60)
    for e in e2e_files:
        b = load_backend(e.path, CPU)
        assert b.meta.end2end and (b.meta.nms.conf_thres, b.meta.nms.iou_thres, b.meta.nms.topk) == (0.5, 0.5, 60)
        for r, g in zip(ref, detections(b, x, orig, rps)):
            d = compare_detections(r, g)
            assert d.n_ref > 0 and d.ok(), (e.path, d.largest)


@pytest.mark.slow
def test_detect_on_an_end2end_export_gives_the_checkpoints_detections(small, e2e_files, caplog):
    """The predictor (detect.py) on the end-to-end ONNX file: the .pt's detections and masks at the
    baked thresholds; --classes still applies; flags the graph cannot take are named in one line."""
    # square crops: the .pt's rectangular letterbox is then the static graph's square one
    images = [cv2.imread(str(p)) for p in IMAGES[1:3]]
    frames = [Frame(im[:min(im.shape[:2]), :min(im.shape[:2])], str(p), 0, False) for im, p in zip(images, IMAGES[1:3])]
    opts = dict(source=str(IMAGES[0].parent), conf_thres=0.5, iou_thres=0.5, max_det=60, device="cpu")
    ref = Predictor(PredictOptions(weights=str(small), **opts)).infer(frames)
    got = Predictor(PredictOptions(weights=str(e2e_files[0].path), **opts)).infer(frames)
    for r, g in zip(ref, got):
        d = compare_detections(r, g)
        assert d.n_ref > 0 and d.ok(), d.largest
    keep = int(ref[0].classes[0])
    with caplog.at_level("WARNING"):
        p = Predictor(PredictOptions(weights=str(e2e_files[0].path), **{**opts, "iou_thres": 0.7}, classes=[keep]))
    assert "--iou-thres not applied: the end-to-end export selected its detections inside the graph" in caplog.text
    filtered = p.infer(frames[:1])[0]
    assert len(filtered) and (filtered.classes == keep).all()


@pytest.mark.slow
def test_a_dynamic_openvino_model_is_compiled_once_per_input_shape(raw_files):
    """Each shape runs a model compiled at that shape (static: faster than the dynamic compile), with
    the dynamic compile's outputs; the least recently used shape goes past SHAPES_KEPT."""
    path = next(e.path for e in raw_files if e.format == "openvino" and e.precision == "fp32")
    b = load_backend(path, CPU)
    assert b.model.inputs[0].get_partial_shape().is_dynamic and not b.requests and b.fixed is None
    b.SHAPES_KEPT = 2
    dynamic = b.core.compile_model(b.model, "CPU", b.config)
    shapes = [(1, 3, 224, 160), (2, 3, 160, 224), (1, 3, 224, 160), (1, 3, 128, 128)]
    for shape in shapes:
        x = torch.rand(shape)
        out = b(x)
        want = dynamic.create_infer_request().infer({0: x.numpy()})
        assert (out.pred - torch.from_numpy(want[dynamic.outputs[0]])).abs().max() <= 1e-4 * max(1.0, float(out.pred.abs().max()))
        compiled, _ = b.requests[shape]
        assert compiled.inputs[0].get_partial_shape().is_static and tuple(compiled.inputs[0].get_shape()) == shape
    assert list(b.requests) == [(1, 3, 224, 160), (1, 3, 128, 128)]  # (2, 3, 160, 224) was the least recent


def test_a_static_export_refuses_another_input_size_in_one_line(e2e_files):
    for e in e2e_files:
        b = load_backend(e.path, CPU)
        h, w = b.fixed
        with pytest.raises(ValueError, match=rf"^this model takes {h}x{w} inputs \(got {h}x{w + 32}\); use "
                                             rf"--img-size {h} or export with --dynamic$"):
            b(torch.rand(1, 3, h, w + 32))


@pytest.mark.slow
def test_truncated_onnx_is_one_line(raw_files, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(raw_files[0].path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut.onnx: not a readable ONNX model") as e:
        load_backend(bad, CPU)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_openvino_folder_without_bin(raw_files, tmp_path):
    folder = tmp_path / "m_openvino_model"
    shutil.copytree(raw_files[1].path, folder)
    next(folder.glob("*.bin")).unlink()
    with pytest.raises(CheckpointError, match=r"its weights m.bin are missing beside it"):
        load_backend(folder, CPU)


@pytest.mark.slow
def test_onnx_without_gradpath_metadata_is_one_line(raw_files, tmp_path):
    import onnx

    model = onnx.load(str(raw_files[0].path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(CheckpointError, match=r"other.onnx: no gradpath metadata inside \(was it written by export.py\?\)"):
        load_backend(tmp_path / "other.onnx", CPU)


def test_engine_without_cuda_is_one_line(small, tmp_path):
    fake = tmp_path / "m.engine"
    fake.write_bytes(b"\0" * 64)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="NVIDIA GPU only; this machine has no CUDA device"):
            load_backend(fake, CPU)
        with pytest.raises(ExportError, match="--include engine: TensorRT builds engines on an NVIDIA GPU only"):
            export(ExportOptions(weights=str(small), include=("onnx", "engine"), out=str(tmp_path / "e.onnx")))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine"]  # refused before the ONNX file too
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


@pytest.mark.slow
def test_failed_check_keeps_the_users_file(small, tmp_path, monkeypatch, capsys):
    """A check that fails deletes nothing of the user's, leaves no temporary file behind, and
    export.py exits 1 (a bad option exits 2)."""
    import engine.export.exporter as exporter

    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"the user's own file")
    (folder := tmp_path / "m_openvino_model").mkdir()
    (folder / "m.xml").write_text("user's")
    monkeypatch.setattr(exporter, "RAW_TOL", {"fp32": -1.0})
    assert export_cli.main(["--weights", str(small), "--out", str(dest)]) == 1
    assert "export.py: error: --include onnx: the check against PyTorch failed" in capsys.readouterr().err
    with pytest.raises(CheckFailed, match="check against PyTorch failed"):
        export(ExportOptions(weights=str(small), out=str(dest), include=("openvino",)))
    assert dest.read_bytes() == b"the user's own file" and (folder / "m.xml").read_text() == "user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_openvino_model"]


def test_int8_failing_its_check_is_quantized_again_with_the_full_overflow_fix(small, tmp_path, monkeypatch):
    """Without VNNI, an INT8 model that fails its check is quantized again with NNCF's overflow fix
    on every conv; the failed one is never put in place, and with VNNI there is no second try."""
    import nncf

    import engine.export.exporter as exporter
    import engine.export.openvino as ov_export

    first, full = nncf.OverflowFix.FIRST_LAYER, nncf.OverflowFix.ENABLE
    assert ov_export.overflow_fixes({"avx2", "avx_vnni"}) == (first,)
    assert ov_export.overflow_fixes({"avx2"}) == (first, full)
    seen = []

    def quantize(model, images, n, head, overflow_fix):  # the float model: its check passes
        seen.append(overflow_fix)
        return model

    real_checker = exporter.checker

    def checker(job, precision, what):
        check = real_checker(job, "fp32", what)

        def fail_first(path):
            if precision == "int8" and len(seen) == 1:
                raise CheckFailed("first try failed")
            return check(path)
        return fail_first

    monkeypatch.setattr(exporter, "checker", checker)
    monkeypatch.setattr(ov_export, "quantize_int8", quantize)
    monkeypatch.setattr(ov_export, "overflow_fixes", lambda: (first, full))
    opts = ExportOptions(weights=str(small), include=("openvino",), int8=True, out=str(tmp_path / "m.onnx"))
    files = export(opts)
    assert seen == [first, full] and files[-1].check.endswith("(NNCF overflow fix: enable)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8_openvino_model", "m_openvino_model"]
    shutil.rmtree(tmp_path / "m_int8_openvino_model")
    seen.clear()
    monkeypatch.setattr(ov_export, "overflow_fixes", lambda: (first,))
    with pytest.raises(CheckFailed, match="first try failed"):
        export(opts)
    assert seen == [first] and sorted(p.name for p in tmp_path.iterdir()) == ["m_openvino_model"]


@pytest.mark.parametrize("argv, message", [
    (["--conf-thres", "1.5"], "argument --conf-thres: must be in [0, 1], got 1.5"),  # the shared parser types
    (["--conf-thres", "1"], "--conf-thres 1.0: must be in [0, 1)"),  # then engine.export.options
    (["--iou-thres", "0"], "--iou-thres 0.0: must be in (0, 1]"),
    (["--topk-all", "0"], "argument --topk-all: must be at least 1, got 0"),
    (["--int8", "--include", "openvino", "--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    (["--opset", "9"], "--opset 9: must be 11 to 20"),
    (["--int8"], "--int8: quantizes --include openvino or engine; add one of them"),
    (["--batch", "0"], "argument --batch-size/--batch: must be at least 1, got 0"),
    (["--img-size", "0"], "argument --img-size/--img/--imgsz: must be at least 1, got 0"),
    (["--include", "openvino", "--int8", "--data", "nope.yaml"], "--data nope.yaml: no such file"),
    (["--format", "openvino", "--include", "onnx"], "--format and --include both name formats; give one"),
    (["--half", "--device", "cpu"], "--half: FP16 ONNX and TensorRT exports need a CUDA device"),
])
def test_bad_options_exit_2_in_one_line_before_anything_is_written(small, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["export.py"])  # the program name argparse prints, as when run
    out = tmp_path / "x.onnx"
    try:
        code = export_cli.main(["--weights", str(small), "--out", str(out), *argv])
    except SystemExit as e:  # the parser's own checks exit there
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export.py: error: {message}"), err
    assert list(tmp_path.iterdir()) == []


def test_official_flags_are_accepted_with_one_warning_each(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["export.py"])
    args = export_cli.parse_args(["--weights", "w.pt", "--grid", "--include-nms", "--data", "d.yaml"])
    assert capsys.readouterr().err.splitlines() == [
        "export.py: warning: --grid has no effect here: every export decodes the grid inside the graph "
        "(YOLOv7's --grid output)"] and not hasattr(args, "grid")
    notes = export_cli.accepted_flags(args)
    assert [n.split(":")[0] for n in notes] == ["--include-nms", "--data d.yaml"]
    assert "EfficientNMS_TRT" in notes[0]
    assert export_cli.parse_args(["--weights", "w.pt", "--end2end"]).nms
    assert export_cli.parse_args(["--weights", "w.pt", "--include", "onnx", "openvino"]).include == ["onnx", "openvino"]


def test_official_flags_for_other_formats_are_named_and_the_rest_warned(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["export.py"])
    for flag, fmt in (("--keras", "TensorFlow"), ("--per-tensor", "TensorFlow"), ("--mlmodel", "CoreML"),
                      ("--fp16", "CoreML"), ("--optimize", "TorchScript for mobile")):
        with pytest.raises(SystemExit) as e:
            export_cli.parse_args(["--weights", "w.pt", flag])
        err = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and err == [f"export.py: error: {flag}: {fmt} is not exported here "
                                             f"(--include: onnx, openvino, torchscript, engine)"]
    args = export_cli.parse_args(["--weights", "w.pt", "--dynamic-batch", "--max-wh", "7680", "--inplace", "--verbose",
                                  "--cache", "t.cache", "--agnostic-nms", "--topk-per-class", "50", "--topk-all", "30"])
    warned = [line.split(" has no effect")[0] for line in capsys.readouterr().err.splitlines()]
    assert warned == [f"export.py: warning: {f}" for f in ("--dynamic-batch", "--max-wh", "--inplace", "--verbose",
                                                            "--cache", "--agnostic-nms", "--topk-per-class")]
    assert args.topk_all == 30 and not args.dynamic and not any(k.startswith("ignored_") for k in vars(args))


@pytest.mark.slow
def test_tracking_takes_its_look_from_a_pytorch_model_only(small, raw_files, tmp_path, caplog):
    """detect.py --track's predictor gives each detection an embedding from the checkpoint's
    backbone maps; an exported file has no reachable layers, which the run says in one line."""
    frames = tmp_path / "frames"
    frames.mkdir()
    image = cv2.imread(str(IMAGES[1]))
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.jpg"), image)
    frame = Frame(image, str(frames / "0.jpg"), 0, False)
    pred = Predictor(PredictOptions(weights=str(small), source=str(frames), img_size=SIZE, conf_thres=0.1,
                                    device="cpu", track=True))
    dets = pred.infer([frame])[0]
    assert len(dets) and dets.embeddings.shape == (len(dets), 4 * sum(pred.backend.model.channels[i] for i in pred.tap.layers))
    assert torch.allclose(dets.embeddings.norm(dim=1), torch.ones(len(dets)))
    plain = Predictor(PredictOptions(weights=str(small), source=str(frames), img_size=SIZE, conf_thres=0.1, device="cpu"))
    same = plain.infer([frame])[0]
    assert same.embeddings is None and torch.equal(same.boxes, dets.boxes)  # the tap changes no detection
    caplog.clear()
    with caplog.at_level("INFO", logger="gradpath.detect"):
        onnx = Predictor(PredictOptions(weights=str(raw_files[0].path), source=str(frames), img_size=SIZE,
                                        conf_thres=0.1, device="cpu", track=True))
    assert onnx.tap is None and onnx.infer([frame])[0].embeddings is None
    assert "tracking without the appearance cue" in caplog.text and "motion, class and masks" in caplog.text

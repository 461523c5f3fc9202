"""TensorRT engines (GPU only): FP32 and FP16 exports of a small model, raw and end-to-end, read
back through the TensorRT backend and compared with PyTorch on real images."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.export.checks import check_input, compare_detections
from engine.export.exporter import ExportOptions, export
from engine.infer.backends import load_backend
from models.model import build_model
from tests.spread import spread_head
from utils.checkpoint import save_checkpoint
from utils.postprocess import end2end_postprocess, postprocess

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "datasets/coco-mini/images").iterdir())


@pytest.mark.cuda
@pytest.mark.parametrize("nms", [False, True])
def test_tensorrt_engine_equals_pytorch(small_cfg, tmp_path, nms):
    pytest.importorskip("tensorrt")
    torch.manual_seed(0)
    model = build_model(small_cfg("anchor")).eval()
    spread_head(model, check_input(192, 1, IMAGES[0])[0])
    ckpt = {"model": model.state_dict(), "ema": None,
            "config": {"model": model.yaml, "nc": 80, "names": [str(i) for i in range(80)], "img_size": 192}}
    src = save_checkpoint(ckpt, tmp_path / "m.pt")
    gpu = torch.device("cuda:0")
    (e,) = export(ExportOptions(weights=str(src), include=("engine",), device="0", nms=nms, conf_thres=0.5))
    assert e.path.suffix == ".engine" and e.precision == "fp32"
    parts = [check_input(192, 1, p) for p in IMAGES[1:3]]
    x, orig, rps = torch.cat([p[0] for p in parts]).to(gpu), [p[1] for p in parts], [p[2] for p in parts]
    engine, ref = load_backend(e.path, gpu), load_backend(src, gpu)
    assert engine.end2end == nms and engine.img_size == 192
    r_out, g_out = ref(x), engine(x)
    refs = postprocess(r_out.pred, r_out.proto, (192, 192), orig, rps, 0.5, 0.45, 100)
    gots = (end2end_postprocess(g_out, (192, 192), orig, rps) if nms else
            postprocess(g_out.pred, g_out.proto, (192, 192), orig, rps, 0.5, 0.45, 100))
    for r, g in zip(refs, gots):
        d = compare_detections(r.__class__(r.boxes.cpu(), r.scores.cpu(), r.classes.cpu(), r.masks.cpu()),
                               g.__class__(g.boxes.cpu(), g.scores.cpu(), g.classes.cpu(), g.masks.cpu()))
        assert d.n_ref > 0 and d.ok(), d.largest

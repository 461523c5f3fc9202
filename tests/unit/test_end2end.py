"""The end-to-end graph (NMS through the ONNX NonMaxSuppression op, top K, masks inside) gives
the detections and masks of utils.postprocess, in PyTorch and through onnxruntime, on both heads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.export.checks import MIN_MASK_AREA, box_overlap, check_input, mask_iou
from engine.export.end2end import End2End
from engine.checkpoint import BakedNms, ModelMeta
from engine.export.onnx import onnx_bytes
from models.model import build_model
from tests.spread import spread_head
from utils.postprocess import end2end_postprocess, postprocess
from utils.structures import End2EndOutput

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "datasets/coco-mini/images").iterdir())
SIZE = 160


@pytest.fixture(scope="module", params=["anchor", "anchor_free"])
def model(request, small_cfg):
    torch.manual_seed(0)
    m = build_model(small_cfg(request.param)).eval()
    return spread_head(m, check_input(SIZE, 1, IMAGES[0])[0]).fuse()


def images(n: int, size: int = SIZE):
    parts = [check_input(size, 1, p) for p in IMAGES[1:1 + n]]
    return torch.cat([p[0] for p in parts]), [p[1] for p in parts], [p[2] for p in parts]


def assert_same_detections(ref, got):
    """Same kept boxes (one-to-one, same class, IoU >= 0.99; boxes clipped to no area at an image
    edge: within 0.5 px), scores within 1e-3, mask IoU >= 0.98 (masks of >= 32x32 px each, all
    masks' pixels pooled)."""
    assert len(ref) == len(got) > 0
    iou = box_overlap(ref.boxes, got.boxes) * (ref.classes[:, None] == got.classes[None])
    j = iou.argmax(1)
    assert iou[torch.arange(len(ref)), j].min() >= 0.99 and len(set(j.tolist())) == len(ref)
    assert (ref.scores - got.scores[j]).abs().max() <= 1e-3
    if ref.masks is not None:  # per mask of >= 32x32 px, and over all pixels (see checks.mask_iou)
        a, b = ref.masks, got.masks[j]
        assert ((a | b).flatten(1).sum(1) >= MIN_MASK_AREA).sum() >= 3  # masks with pixels to compare
        assert mask_iou(a, b) >= 0.98


def reference(model, x, orig, rps, conf, iou, k, multi_label):
    with torch.no_grad():
        pred, proto = model(x)
    return postprocess(pred, proto, tuple(x.shape[-2:]), orig, rps, conf, iou, k, multi_label=multi_label)


@pytest.mark.parametrize("multi_label", [False, True])
def test_pytorch_end2end_equals_postprocess(model, multi_label):
    x, orig, rps = images(2)
    e2e = End2End(model, model.nc, model.nm, 0.5, 0.5, 100, multi_label)
    with torch.no_grad():
        out = End2EndOutput(*e2e(x))
    assert out.boxes.shape == (2, 100, 4) and out.masks.shape == (2, 100, SIZE // 4, SIZE // 4)
    got = end2end_postprocess(out, (SIZE, SIZE), orig, rps)
    for r, g in zip(reference(model, x, orig, rps, 0.5, 0.5, 100, multi_label), got):
        assert_same_detections(r, g)
    n = out.num_dets[:, 0]
    assert all(out.scores[b, n[b]:].eq(0).all() and out.boxes[b, n[b]:].eq(0).all() for b in range(2))


def test_topk_keeps_the_best(model):
    x, orig, rps = images(1)
    with torch.no_grad():
        out = End2EndOutput(*End2End(model, model.nc, model.nm, 0.3, 0.5, 3)(x))
    ref = reference(model, x, orig, rps, 0.3, 0.5, 3, False)[0]
    assert int(out.num_dets) == 3 == len(ref)
    assert torch.allclose(out.scores[0].sort().values, ref.scores.sort().values, atol=1e-6)


def run_onnx(data: bytes, x: torch.Tensor) -> End2EndOutput:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return End2EndOutput(*(torch.from_numpy(o) for o in sess.run(None, {"images": x.numpy()})))


@pytest.mark.slow
def test_onnx_end2end_equals_postprocess_at_any_batch_and_size(model):
    """Exported at batch 1 and 160 with dynamic axes; run at batch 3 and at 224. Each head once and
    each selection once: per class (multi-label) on the anchor head, best class on the other."""
    multi_label = model.head.kind == "anchor"
    e2e = End2End(model, model.nc, model.nm, 0.5, 0.45, 50, multi_label)
    meta = ModelMeta(tuple(str(i) for i in range(model.nc)), tuple(range(model.nc)), SIZE, 32, "segment",
                     nms=BakedNms(0.5, 0.45, 50, multi_label))
    data = onnx_bytes(e2e, images(1)[0], meta, batch_dynamic=True, size_dynamic=True)
    for n, size in ((3, SIZE), (1, 224)):
        x, orig, rps = images(n, size)
        out = run_onnx(data, x)
        assert out.num_dets.dtype == torch.int32 and out.masks.shape == (n, 50, size // 4, size // 4)
        got = end2end_postprocess(out, (size, size), orig, rps)
        for r, g in zip(reference(model, x, orig, rps, 0.5, 0.45, 50, multi_label), got):
            assert_same_detections(r, g)


def test_onnx_end2end_with_nothing_above_the_threshold(model):
    e2e = End2End(model, model.nc, model.nm, 0.999999, 0.45, 10)
    meta = ModelMeta(("a",) * model.nc, tuple(range(model.nc)), SIZE, 32, "segment", nms=BakedNms(0.999999, 0.45, 10))
    out = run_onnx(onnx_bytes(e2e, images(1)[0], meta, True, False), images(2)[0])
    assert out.num_dets.tolist() == [[0], [0]] and not out.boxes.any() and not out.masks.any()


def test_end2end_rejects_bad_thresholds(model):
    with pytest.raises(ValueError, match="--iou-thres"):
        End2End(model, model.nc, model.nm, 0.25, 0.0, 10)
    with pytest.raises(ValueError, match="--topk-all"):
        End2End(model, model.nc, model.nm, 0.25, 0.45, 0)

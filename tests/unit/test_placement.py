"""GPU-only bugs caught on the CPU: every tensor the losses, assigners, postprocess, mask decoding
and a whole training step create must be made on the input's device (StrictDevice rejects a
factory call without device=), unregistered tensors are found by running the models on 'meta',
and float16 goes in wherever AMP or --half would feed it."""
from __future__ import annotations

import copy

import pytest
import torch

import models.loss.losses
from conftest import ema_of
from device_guard import PlacementError, StrictDevice
from models.loss.assigners import TaskAlignedAssigner, match_anchors
from models.loss.losses import build_criterion
from models.model import build_model
from utils.masks import decode_masks
from utils.postprocess import postprocess
from utils.structures import Batch, HeadOutput

S, NC, NM, R = 128, 80, 32, 16
STRIDES = torch.tensor([8.0, 16.0, 32.0])
ANCHORS = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                        [116, 90, 156, 198, 373, 326]], dtype=torch.float32).view(3, 3, 2)

@pytest.fixture(scope="module")
def hyp():
    from engine.config import Hyp

    return Hyp.load().loss

def batch_with_masks(b: int = 2) -> Batch:
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 50.0, 120.0, 110.0], [5.0, 5.0, 20.0, 15.0]])
    masks = torch.zeros((3, S // 4, S // 4), dtype=torch.uint8)
    for k, q in enumerate((boxes / 4).long()):
        masks[k, q[1]:q[3], q[0]:q[2]] = 1
    return Batch(torch.zeros((b, 3, S, S), dtype=torch.uint8), torch.tensor([0, 0, 1]), torch.tensor([3, 7, 0]),
                 boxes, masks, list(range(b)), [""] * b, [(S, S)] * b, [((1.0, 1.0), (0.0, 0.0))] * b)

def head_output(kind: str, dtype: torch.dtype) -> HeadOutput:
    """What a head gives the loss; under AMP the preds and protos are float16."""
    g = torch.Generator().manual_seed(0)
    shape = (lambda n: (2, 3, n, n, 5 + NC + NM)) if kind == "anchor" else (lambda n: (2, 4 * R + NC + NM, n, n))
    preds = [torch.randn(shape(S // int(s)), generator=g).to(dtype).requires_grad_() for s in STRIDES]
    proto = torch.randn((2, NM, S // 4, S // 4), generator=g).to(dtype).requires_grad_()
    return HeadOutput(kind, preds, proto, STRIDES, ANCHORS if kind == "anchor" else None,
                      0 if kind == "anchor" else R, NC, NM)

# --- the checker itself -----------------------------------------------------------------------

def planted_zeros(n: int) -> torch.Tensor:
    return torch.zeros(n)  # the bug: no device=

def test_guard_rejects_a_planted_device_less_zeros_and_names_the_line():
    x = torch.ones(3)
    with StrictDevice():
        with pytest.raises(PlacementError, match=r"test_placement.py:\d+: torch.zeros\(\) without device="):
            x + planted_zeros(3)
        assert (x + torch.zeros(3, device=x.device)).sum() == 3  # with a device it passes
        assert torch.as_tensor(x).sum() == 3  # a tensor argument keeps its own device

@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_guard_catches_a_bug_planted_inside_the_loss(hyp, kind, monkeypatch):
    """The loss code as it runs in training, with one device-less tensor planted in a helper it calls."""
    real = models.loss.losses.xyxy_to_xywh if kind == "anchor" else models.loss.losses.dist_to_bbox

    def planted(*args):
        out = real(*args)
        return out + planted_zeros(out.shape[-1])

    monkeypatch.setattr(models.loss.losses, "xyxy_to_xywh" if kind == "anchor" else "dist_to_bbox", planted)
    criterion = build_criterion(hyp, kind, S)
    out, batch = head_output(kind, torch.float32), batch_with_masks()
    with StrictDevice(), pytest.raises(PlacementError, match="torch.zeros"):
        criterion(out, batch)

# --- the library under the checker -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_losses_with_masks_create_tensors_on_the_input_device(hyp, kind, dtype):
    criterion = build_criterion(hyp, kind, S)
    out, batch = head_output(kind, dtype), batch_with_masks()
    guard = StrictDevice()
    with guard:
        loss, terms = criterion(out, batch)
        loss.backward()
    assert guard.calls > 0  # the loss does create tensors, all with a device
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and terms["seg"] > 0
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
               for p in [*out.preds, out.proto])

def test_assigners_create_tensors_on_the_input_device():
    boxes = torch.tensor([[4.0, 5.0, 2.0, 3.0], [10.0, 10.0, 6.0, 6.0]])
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]]])
    points = torch.tensor([[20.0, 20.0], [4.0, 4.0]])
    bidx, labels, valid, scores = torch.tensor([0, 1]), torch.tensor([[0, 2]]), torch.tensor([[True, True]]), \
        torch.full((1, 2, 3), 0.9)
    no_labels, no_valid = torch.zeros((1, 0), dtype=torch.long), torch.zeros((1, 0), dtype=torch.bool)
    with StrictDevice():
        m = match_anchors(boxes, bidx, ANCHORS[0] / 8, (16, 16), 4.0)
        t = TaskAlignedAssigner(topk=10)(scores, gt[:, :1].expand(1, 2, 4), points, labels, gt, valid)
        empty = TaskAlignedAssigner()(scores, gt[:, :1].expand(1, 2, 4), points, no_labels, gt[:, :0], no_valid)
    assert len(m.target) > 0 and t.fg.any() and not empty.fg.any()

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("retina", [False, True])
def test_postprocess_and_mask_decoding_create_tensors_on_the_input_device(dtype, retina):
    """A model's eval output (an exported --half model's is float16), NMS, masks back to the
    original image of a letterboxed input, a class filter, and an image without detections."""
    g = torch.Generator().manual_seed(0)
    n = 500
    xy = torch.rand((2, n, 2), generator=g) * 100
    pred = torch.cat((xy, xy + 5 + torch.rand((2, n, 2), generator=g) * 1500,
                      torch.rand((2, n, NC), generator=g), torch.randn((2, n, NM), generator=g)), -1)
    pred[1, :, 4:4 + NC] = 0.0  # image 1: nothing above the threshold
    proto = torch.randn((2, NM, S // 4, S // 4), generator=g)
    pred, proto = pred.to(dtype), proto.to(dtype)
    orig, rp = [(1500, 1900)] * 2, [((S / 1900, S / 1900), (0.0, 13.0))] * 2
    with StrictDevice():
        dets = postprocess(pred, proto, (S, S), orig, rp, 0.5, 0.5, 30, multi_label=True, classes=[1, 2, 3],
                           retina_masks=retina)
    assert 0 < len(dets[0]) <= 30 and len(dets[1]) == 0
    assert dets[0].masks.shape == (len(dets[0]), 1500, 1900) and dets[0].masks.any()
    assert set(dets[0].classes.tolist()) <= {1, 2, 3} and dets[0].boxes.dtype == torch.float32
    assert dets[1].masks.shape == (0, 1500, 1900)

def test_mask_crop_in_float16_boxes_matches_float32_beyond_1024_pixels():
    """fp16 has a step of 1 above 1024 and 2 above 2048: box edges there must not move the crop."""
    g = torch.Generator().manual_seed(1)
    coef, proto = torch.randn((4, NM), generator=g), torch.randn((NM, 64, 64), generator=g)
    boxes = torch.tensor([[10.3, 20.7, 200.2, 230.9], [100.5, 5.5, 250.5, 60.5], [3.3, 3.3, 255.7, 255.7],
                          [150.1, 150.1, 170.9, 170.9]])
    rp = ((256 / 2900, 256 / 2900), (0.0, 0.0))
    with StrictDevice():
        ref = decode_masks(coef, proto, boxes, (256, 256), (2900, 2900), rp, retina=True)
        half = decode_masks(coef.half(), proto.half(), boxes.half().float().half(), (256, 256), (2900, 2900), rp,
                            retina=True)
    boxes16 = boxes.half().float()  # the same boxes as float16 holds them, decoded in float32
    ref16 = decode_masks(coef.half().float(), proto.half().float(), boxes16, (256, 256), (2900, 2900), rp, retina=True)
    assert ref.any() and torch.equal(half, ref16)

@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_models_run_on_meta_so_every_tensor_is_a_registered_buffer(small_cfg, kind):
    """On 'meta' a tensor that model.to(device) does not move (a plain attribute, or one made
    without device=) meets the meta activations and fails, as a CPU tensor would on a GPU."""
    model = build_model(small_cfg(kind)).to("meta")
    x = torch.rand(2, 3, 96, 128, device="meta")
    out = model.train()(x)
    assert all(p.device.type == "meta" for p in out.preds) and out.proto.device.type == "meta"
    pred, proto = model.eval()(x)
    assert pred.device.type == "meta" and pred.shape[-1] == 4 + 80 + 32 and proto.device.type == "meta"

@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_half_model_decodes_like_the_float_model(small_cfg, kind):
    """--half (val.py, detect.py, export) turns buffers such as the anchor-free head's bins to
    float16; the decoded output must still match the float32 model's."""
    torch.manual_seed(0)
    model = build_model(small_cfg(kind)).fuse().eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref_pred, ref_proto = model(x)
        with StrictDevice():
            pred, proto = copy.deepcopy(model).half()(x.half())
    assert pred.dtype == torch.float32  # the heads decode in float32
    boxes_err = (pred[..., :4] - ref_pred[..., :4]).abs().max().item()
    assert boxes_err < 0.5 and (pred[..., 4:84] - ref_pred[..., 4:84]).abs().max() < 0.01
    assert (proto.float() - ref_proto).abs().max() < 0.05

@pytest.mark.slow
@pytest.mark.parametrize("kind,amp", [("anchor", False), ("anchor_free", True)])
def test_a_whole_training_step_creates_tensors_on_the_input_device(make_trainer, kind, amp):
    """Trainer.train_step on a real mosaic batch (multi-scale resize, forward, loss with masks,
    backward, clipping, optimizer and EMA). With amp: autocast to bfloat16 on the CPU, so the loss
    gets reduced-precision outputs as under --amp on a GPU, and channels_last inputs."""
    from engine.device import Precision

    trainer = make_trainer(kind, multi_scale=True)
    if amp:
        trainer.precision, trainer.memory_format = Precision(True, torch.bfloat16), torch.channels_last
    batch = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with StrictDevice():
        terms = trainer.train_step(batch, 0)
    assert set(terms) >= {"box", "cls", "seg"} and all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert trainer.skipped_steps == 0 and ema_of(trainer).updates == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))

"""Losses and assigners: hand-checked matching, CIoU/DFL values, finite losses and gradients,
a perfect prediction beating a random one, empty batches, and a real model on real images."""
from __future__ import annotations

import math

import pytest
import torch

from models.loss.assigners import TaskAlignedAssigner, match_anchors
from utils.geometry import anchor_points, bbox_iou, bbox_to_dist, box_mask
from models.loss.losses import build_criterion, dfl_loss, mask_losses
from utils.structures import Batch, HeadOutput

STRIDES = torch.tensor([8.0, 16.0, 32.0])
ANCHORS = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                        [116, 90, 156, 198, 373, 326]], dtype=torch.float32).view(3, 3, 2)
S, NC, NM, R = 128, 80, 32, 16


@pytest.fixture(scope="module")
def hyp():
    from engine.config import Hyp

    return Hyp.load().loss


def make_batch(boxes: list[list[float]], bidx: list[int], classes: list[int], b: int = 2, size: int = S) -> Batch:
    """Boxes xyxy input px; each instance's mask is its box filled at 1/4 resolution."""
    bx = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    masks = torch.zeros((len(bx), size // 4, size // 4), dtype=torch.uint8)
    for k, q in enumerate((bx / 4).round().long()):
        masks[k, q[1]:q[3], q[0]:q[2]] = 1
    return Batch(torch.zeros((b, 3, size, size), dtype=torch.uint8), torch.tensor(bidx, dtype=torch.long),
                 torch.tensor(classes, dtype=torch.long), bx, masks, list(range(b)), [""] * b,
                 [(size, size)] * b, [((1.0, 1.0), (0.0, 0.0))] * b)


BATCH = dict(boxes=[[10, 20, 60, 90], [50, 50, 120, 110], [5, 5, 20, 15]], bidx=[0, 0, 1], classes=[3, 7, 0])


def anchor_output(b: int = 2, seed: int = 0) -> HeadOutput:
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randn((b, 3, S // int(s), S // int(s), 5 + NC + NM), generator=g).requires_grad_() for s in STRIDES]
    proto = torch.randn((b, NM, S // 4, S // 4), generator=g).requires_grad_()
    return HeadOutput("anchor", preds, proto, STRIDES, ANCHORS, 0, NC, NM)


def free_output(b: int = 2, seed: int = 0) -> HeadOutput:
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randn((b, 4 * R + NC + NM, S // int(s), S // int(s)), generator=g).requires_grad_() for s in STRIDES]
    proto = torch.randn((b, NM, S // 4, S // 4), generator=g).requires_grad_()
    return HeadOutput("anchor_free", preds, proto, STRIDES, None, R, NC, NM)


# --- box math -------------------------------------------------------------------------------

def test_iou_and_ciou_values():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert bbox_iou(a, a, ciou=True).item() == pytest.approx(1.0, abs=1e-6)
    half = torch.tensor([5.0, 0.0, 15.0, 10.0])
    assert bbox_iou(a, half).item() == pytest.approx(1 / 3, abs=1e-6)
    # Same IoU, same aspect: CIoU subtracts centre distance^2 / enclosing diagonal^2 = 25 / 325.
    assert bbox_iou(a, half, ciou=True).item() == pytest.approx(1 / 3 - 25 / 325, abs=1e-5)
    far = torch.tensor([20.0, 20.0, 30.0, 30.0])
    assert bbox_iou(a, far).item() == 0.0 and bbox_iou(a, far, ciou=True).item() < 0


def test_dfl_values():
    logits = torch.zeros((1, 4, R))
    assert dfl_loss(logits, torch.full((1, 4), 3.5)).item() == pytest.approx(math.log(R), abs=1e-5)
    peaked = torch.full((1, 4, R), -30.0)
    peaked[..., 3] = 30.0
    assert dfl_loss(peaked, torch.full((1, 4), 3.0)).item() < 1e-6
    assert dfl_loss(peaked, torch.full((1, 4), 3.5)).item() > 1.0  # half the mass belongs in bin 4


# --- assigners ------------------------------------------------------------------------------

def test_match_anchors_cells_and_ratio():
    anchors = torch.tensor([[1.0, 1.0], [4.0, 4.0], [20.0, 20.0]])
    boxes = torch.tensor([[3.3, 4.7, 2.0, 2.0]])  # grid units, 10x10 grid
    m = match_anchors(boxes, torch.tensor([1]), anchors, (10, 10), anchor_t=4.0)
    # wh ratio 2 for anchors 0 and 1, 10 for anchor 2 -> 2 anchors x 3 cells.
    assert sorted(set(m.anchor_idx.tolist())) == [0, 1]
    cells = {(int(i), int(j)) for i, j in zip(m.gi, m.gj)}
    assert cells == {(3, 4), (2, 4), (3, 5)}  # own cell, left (x frac .3), below (y frac .7)
    assert len(m.target) == 6 and m.image.eq(1).all() and m.target.eq(0).all()
    own = (m.gi == 3) & (m.gj == 4)
    assert torch.allclose(m.tbox[own][0], torch.tensor([0.3, 0.7, 2.0, 2.0]), atol=1e-5)
    left = m.gi == 2
    assert torch.allclose(m.tbox[left][0, :2], torch.tensor([1.3, 0.7]), atol=1e-5)


def test_match_anchors_edges_and_empty():
    anchors = torch.tensor([[2.0, 2.0]])
    m = match_anchors(torch.tensor([[0.4, 9.8, 2.0, 2.0]]), torch.tensor([0]), anchors, (10, 10), 4.0)
    assert {(int(i), int(j)) for i, j in zip(m.gi, m.gj)} == {(0, 9)}  # no neighbour outside the grid
    on_border = match_anchors(torch.tensor([[4.0, 6.0, 2.0, 2.0]]), torch.tensor([0]), anchors, (10, 10), 4.0)
    assert {(int(i), int(j)) for i, j in zip(on_border.gi, on_border.gj)} == {(4, 6), (3, 6), (4, 5)}
    e = match_anchors(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), anchors, (10, 10), 4.0)
    assert len(e.target) == 0 and e.tbox.shape == (0, 4)


def test_tal_picks_topk_inside_and_resolves_conflicts():
    points = torch.tensor([[x + 0.5, 0.5] for x in range(8)]) * 8  # one row of 8 anchors, stride 8
    gt = torch.tensor([[[0.0, 0.0, 40.0, 8.0], [24.0, 0.0, 64.0, 8.0]]])  # anchors 0-4 and 3-7 inside
    pred = gt[0, 0].repeat(8, 1)
    pred[3:] = gt[0, 1]  # anchors 3..7 predict gt 1 exactly, 0..2 predict gt 0 exactly
    pred[1] = torch.tensor([0.0, 0.0, 20.0, 8.0])  # IoU 0.5 with gt 0
    scores = torch.full((1, 8, 2), 0.5)
    t = TaskAlignedAssigner(topk=3, alpha=0.5, beta=6.0)(scores, pred[None], points, torch.tensor([[0, 1]]),
                                                         gt, torch.tensor([[True, True]]))
    # gt0's inside anchors 0..4 have IoU 1, 0.5, 1, 0.2, 0.2: top-3 = 0, 1, 2.
    # gt1's inside anchors 3..7 all have IoU 1 (ties): any 3 of them.
    assert t.fg[0, :3].all() and t.target[0, :3].tolist() == [0, 0, 0]
    assert t.fg[0].sum() == 6 and t.target[0, t.fg[0]].tolist().count(1) == 3
    assert torch.allclose(t.boxes[0, 0], gt[0, 0])
    # soft targets: best anchor of each gt gets that gt's best IoU (1.0); anchor 1 gets 0.5^6 / 1^6.
    assert t.scores[0, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    assert t.scores[0, 1, 0].item() == pytest.approx(0.5 ** 6, rel=1e-3)


def test_tal_conflict_goes_to_higher_iou():
    points = torch.tensor([[20.0, 20.0]])
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]]])
    pred = torch.tensor([[[10.0, 10.0, 30.0, 30.0]]])
    t = TaskAlignedAssigner(topk=10)(torch.full((1, 1, 3), 0.9), pred, points, torch.tensor([[0, 2]]),
                                     gt, torch.tensor([[True, True]]))
    assert t.fg.item() and t.target.item() == 1 and t.scores[0, 0].argmax().item() == 2


# --- losses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_loss_finite_positive_with_finite_grads(hyp, kind):
    out = anchor_output() if kind == "anchor" else free_output()
    loss, terms = build_criterion(hyp, kind, S)(out, make_batch(**BATCH))
    keys = {"box", "obj", "cls", "seg"} if kind == "anchor" else {"box", "cls", "dfl", "seg"}
    assert set(terms) == keys and all(v.item() > 0 and not v.requires_grad for v in terms.values())
    assert loss.item() == pytest.approx(sum(v.item() for v in terms.values()) * 2, rel=1e-5)
    loss.backward()
    for t in [*out.preds, out.proto]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_empty_batch_finite_and_touches_every_output(hyp, kind):
    out = anchor_output() if kind == "anchor" else free_output()
    batch = make_batch([], [], [])
    loss, terms = build_criterion(hyp, kind, S)(out, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    assert terms["box"].item() == 0 and terms["seg"].item() == 0
    loss.backward()  # every output still gets a gradient, so DDP sees every parameter used
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in [*out.preds, out.proto])


@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_detection_only_head_has_no_seg_term(hyp, kind):
    out = anchor_output() if kind == "anchor" else free_output()
    out.proto = None
    loss, terms = build_criterion(hyp, kind, S)(out, make_batch(**BATCH))
    assert "seg" not in terms and torch.isfinite(loss)


def test_anchor_gains_follow_r62_scaling(hyp):
    crit = build_criterion(hyp, "anchor", 320)
    g = crit._gains(nl=3, nc=80)
    assert g["box"] == pytest.approx(0.05) and g["cls"] == pytest.approx(0.3) and g["seg"] == pytest.approx(0.05)
    assert g["obj"] == pytest.approx(0.7 * 0.25)
    assert crit._gains(nl=3, nc=1)["cls"] == pytest.approx(0.3 / 80)


def _perfect_anchor_output(batch: Batch, hyp) -> HeadOutput:
    """Logits that decode every matched anchor to its target box, class and objectness."""
    out = anchor_output()
    preds = [torch.full_like(p, -12.0) for p in out.preds]
    xywh = torch.cat(((batch.boxes[:, :2] + batch.boxes[:, 2:]) / 2, batch.boxes[:, 2:] - batch.boxes[:, :2]), 1)
    for i, p in enumerate(preds):
        s = float(STRIDES[i])
        m = match_anchors(xywh / s, batch.batch_idx, ANCHORS[i] / s, tuple(p.shape[2:4]), hyp.anchor_t)
        xy = torch.logit((m.tbox[:, :2] + 0.5) / 2, eps=1e-6)
        wh = torch.logit((m.tbox[:, 2:] / m.anchor).sqrt() / 2, eps=1e-6)
        p[m.image, m.anchor_idx, m.gj, m.gi, :4] = torch.cat((xy, wh), 1)
        p[m.image, m.anchor_idx, m.gj, m.gi, 4] = 12.0
        p[m.image, m.anchor_idx, m.gj, m.gi, 5 + batch.classes[m.target]] = 12.0
    return HeadOutput("anchor", [p.requires_grad_() for p in preds], out.proto, STRIDES, ANCHORS, 0, NC, NM)


def test_anchor_perfect_prediction_beats_random(hyp):
    batch = make_batch(**BATCH)
    crit = build_criterion(hyp, "anchor", S)
    _, good = crit(_perfect_anchor_output(batch, hyp), batch)
    _, rand = crit(anchor_output(), batch)
    assert good["box"] < 1e-3 < rand["box"]
    assert good["cls"] < rand["cls"] / 100 and good["obj"] < rand["obj"] / 10


def _perfect_free_output(batch: Batch) -> HeadOutput:
    """Bins and class logits that reproduce each gt at every anchor inside it (one gt per image)."""
    out = free_output()
    shapes = [tuple(p.shape[-2:]) for p in out.preds]
    points, steps = anchor_points(shapes, STRIDES)
    flat = torch.full((2, len(points), 4 * R + NC + NM), -12.0)
    for box, b, c in zip(batch.boxes, batch.batch_idx, batch.classes):
        d = (bbox_to_dist(points, box.expand(len(points), 4)) / steps).clamp(0, R - 1.01)
        inside = d.amin(-1) > 0
        left = d.floor().long()
        prob = torch.zeros((len(points), 4, R)).scatter_(-1, left[..., None], (left + 1 - d)[..., None])
        prob.scatter_(-1, (left + 1)[..., None], (d - left)[..., None])
        flat[b, inside, :4 * R] = prob[inside].clamp(min=1e-9).log().flatten(1)
        flat[b, inside, 4 * R + c] = 12.0
    preds, start = [], 0
    for h, w in shapes:
        preds.append(flat[:, start:start + h * w].transpose(1, 2).reshape(2, -1, h, w).clone().requires_grad_())
        start += h * w
    return HeadOutput("anchor_free", preds, out.proto, STRIDES, None, R, NC, NM)


def test_anchor_free_perfect_prediction_beats_random(hyp):
    batch = make_batch([[10, 20, 60, 90], [40, 30, 120, 100]], [0, 1], [3, 7])
    crit = build_criterion(hyp, "anchor_free", S)
    _, good = crit(_perfect_free_output(batch), batch)
    _, rand = crit(free_output(), batch)
    assert good["box"] < 1e-2 < rand["box"] and good["dfl"] < rand["dfl"] / 2
    assert good["cls"] < rand["cls"] / 100


def test_mask_loss_cropped_to_box_and_area_normalised():
    h = w = 16
    gt = torch.zeros((1, h, w), dtype=torch.uint8)
    gt[0, 4:12, 2:10] = 1
    box = torch.tensor([[2.0, 4.0, 10.0, 12.0]])
    proto = torch.stack((gt[0].float() * 2 - 1, torch.ones(h, w)))[None]  # (1,2,h,w)
    args = (proto, torch.tensor([0]), torch.tensor([0]), gt, box)
    good = mask_losses(torch.tensor([[10.0, 0.0]]), *args)
    flat = mask_losses(torch.tensor([[0.0, 0.0]]), *args)
    assert flat.item() == pytest.approx(math.log(2), rel=1e-5)  # per-pixel BCE log 2, area 64 of 64 pixels
    assert good.item() < 1e-3
    gt2 = gt.clone()
    gt2[0, :, 12:] = 1  # wrong outside the box: must not count
    assert mask_losses(torch.tensor([[10.0, 0.0]]), proto, torch.tensor([0]), torch.tensor([0]), gt2, box).item() \
        == pytest.approx(good.item(), abs=1e-7)
    assert box_mask(box, h, w, centre=0.0).sum().item() == 64
    assert mask_losses(torch.zeros((0, 2)), *args).shape == (0,)


def test_errors_name_the_problem(hyp):
    with pytest.raises(ValueError, match="unknown head kind"):
        build_criterion(hyp, "yolo", S)
    with pytest.raises(ValueError, match="anchor_free"):
        build_criterion(hyp, "anchor", S)(free_output(), make_batch(**BATCH))


# --- real images ----------------------------------------------------------------------------

def real_batch(bundled, size: int = 128, n: int = 2) -> Batch:
    """The first n annotated train images of coco-mini, resized (aspect kept, top-left) to size."""
    cv2 = pytest.importorskip("cv2")
    from pycocotools.coco import COCO

    coco = COCO(str(bundled / "annotations/instances_train.json"))
    cat_index = {c: i for i, c in enumerate(sorted(coco.getCatIds()))}
    images, boxes, classes, bidx, masks = [], [], [], [], []
    for img_id in [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=i, iscrowd=False)][:n]:
        info = coco.loadImgs(img_id)[0]
        im = cv2.imread(str(bundled / "images" / info["file_name"]))
        r = size / max(im.shape[:2])
        canvas = torch.zeros((size, size, 3), dtype=torch.uint8)
        small = cv2.resize(im, (round(im.shape[1] * r), round(im.shape[0] * r)))
        canvas[:small.shape[0], :small.shape[1]] = torch.from_numpy(small[..., ::-1].copy())
        images.append(canvas.permute(2, 0, 1))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False)):
            x, y, w, h = ann["bbox"]
            m = cv2.resize(coco.annToMask(ann), (round(im.shape[1] * r / 4), round(im.shape[0] * r / 4)),
                           interpolation=cv2.INTER_NEAREST)
            full = torch.zeros((size // 4, size // 4), dtype=torch.uint8)
            full[:m.shape[0], :m.shape[1]] = torch.from_numpy(m)
            boxes.append([x * r, y * r, (x + w) * r, (y + h) * r])
            classes.append(cat_index[ann["category_id"]])
            bidx.append(len(images) - 1)
            masks.append(full)
    return Batch(torch.stack(images), torch.tensor(bidx), torch.tensor(classes), torch.tensor(boxes),
                 torch.stack(masks), list(range(n)), [""] * n, [(size, size)] * n, [((r, r), (0.0, 0.0))] * n)


@pytest.mark.parametrize("kind", ["anchor", "anchor_free"])
def test_loss_on_real_coco_batch(hyp, bundled, kind):
    batch = real_batch(bundled)
    assert len(batch.classes) > 5 and batch.masks.sum() > 0
    out = anchor_output() if kind == "anchor" else free_output()
    loss, terms = build_criterion(hyp, kind, S)(out, batch)
    assert torch.isfinite(loss) and all(v.item() > 0 for v in terms.values())
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in [*out.preds, out.proto])


@pytest.mark.parametrize("cfg", ["gp-n-seg.yaml"])
def test_real_model_forward_loss_backward(hyp, root, bundled, cfg):
    if not (root / "models/model.py").is_file() or not (root / "cfg/models" / cfg).is_file():
        pytest.skip("models/model.py or the model cfg is not in this checkout yet")
    from models.model import build_model

    torch.manual_seed(0)
    model = build_model(str(root / "cfg/models" / cfg)).train()
    batch = real_batch(bundled)
    outputs = model(batch.images.float() / 255)
    loss, terms = build_criterion(hyp, outputs.kind, S)(outputs, batch)
    assert torch.isfinite(loss) and loss.item() > 0 and terms["seg"].item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

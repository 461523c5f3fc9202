"""Training losses of the two heads, with named terms for logging.

`build_criterion(gains, kind, img_size)` -> a callable `criterion(outputs, batch) -> (loss, terms)`:
`loss` is the gained sum times the batch size (the YOLOv5 convention the SGD recipe is tuned for);
`terms` holds the detached, gained per-term values before that multiplication.
Seg loss gain = gains.seg * the box gain of the head (as YOLOv5 r6.2 seg does with its box gain); the
mask term is normalised as each head's reference does (anchor-based: YOLOv5-seg, per level and image;
anchor-free: Ultralytics, over all positives).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.loss.assigners import TaskAlignedAssigner, match_anchors
from utils.geometry import anchor_points, bbox_iou, bbox_to_dist, box_mask, dist_to_bbox, xywh_to_xyxy, xyxy_to_xywh
from utils.structures import Batch, HeadOutput

_DEFAULT_BALANCE = (4.0, 1.0, 0.25, 0.06, 0.02)  # P3..P7, used when the hyp's list has another length


@dataclass(frozen=True)
class LossGains:
    """The loss's hyperparameters (their meaning: cfg/hyp/hyp.scratch-high.yaml). Anchor-based:
    box/cls/obj gains, BCE positive weights, the anchor shape-ratio threshold, per-level
    objectness balance, focal gamma, label smoothing; anchor-free: box_af/cls_af/dfl gains and
    the task-aligned assigner's top-k, alpha, beta; seg: the mask gain of both."""

    box: float
    cls: float
    obj: float
    cls_pw: float
    obj_pw: float
    anchor_t: float
    obj_balance: tuple[float, ...]
    fl_gamma: float
    label_smoothing: float
    box_af: float
    cls_af: float
    dfl: float
    tal_topk: int
    tal_alpha: float
    tal_beta: float
    seg: float


def bce(logits: Tensor, target: Tensor, pos_weight: float = 1.0, gamma: float = 0.0) -> Tensor:
    """Elementwise BCE-with-logits; gamma > 0 adds the focal modulation (alpha 0.25, Lin et al.)."""
    pw = None if pos_weight == 1.0 else logits.new_tensor(pos_weight)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        alpha_t = target * 0.25 + (1 - target) * 0.75
        loss = loss * alpha_t * (1 - p_t) ** gamma
    return loss


def _zero_touch(outputs: HeadOutput, preds: list[Tensor]) -> Tensor:
    """0 * every output, so every head branch gets a (zero) gradient even without positives (DDP)."""
    z = sum(p.sum() for p in preds) * 0.0
    return z + outputs.proto.float().sum() * 0.0 if outputs.proto is not None else z


def _input_hw(outputs: HeadOutput) -> tuple[int, int]:
    s = float(outputs.strides[0])
    shape = outputs.preds[0].shape
    hw = shape[2:4] if outputs.kind == "anchor" else shape[-2:]
    return round(hw[0] * s), round(hw[1] * s)


class Criterion:
    """Common checks; subclasses implement `terms(outputs, batch) -> (dict of gained scalars, zero)`."""

    kind = ""

    def __call__(self, outputs: HeadOutput, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if outputs.kind != self.kind:
            raise ValueError(f"losses: criterion built for '{self.kind}' got a '{outputs.kind}' HeadOutput")
        terms, zero = self.terms(outputs, batch)
        loss = sum(terms.values()) + zero
        return loss * len(outputs.preds[0]), {k: v.detach() for k, v in terms.items()}

    def terms(self, outputs: HeadOutput, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        raise TypeError("Criterion is abstract: use build_criterion")


class AnchorLoss(Criterion):
    """YOLOR / YOLOv5 r6.2 anchor-based loss: CIoU box, IoU-target objectness, BCE classes, masks."""

    kind = "anchor"

    def __init__(self, gains: LossGains, img_size: int = 640):
        self.g, self.img_size = gains, img_size

    def _gains(self, nl: int, nc: int) -> dict[str, float]:
        g, s = self.g, 3.0 / nl
        box = g.box * s
        return {"box": box, "obj": g.obj * (self.img_size / 640) ** 2 * s, "cls": g.cls * nc / 80 * s,
                "seg": g.seg * box}

    def _balance(self, nl: int) -> list[float]:
        bal = list(self.g.obj_balance)
        return bal if len(bal) == nl else list(_DEFAULT_BALANCE[:nl])

    def terms(self, outputs: HeadOutput, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        preds = [p.float() for p in outputs.preds]
        gains = self._gains(len(preds), outputs.nc)
        lbox, lobj, lcls, lseg = self._levels(preds, outputs, batch, with_masks=outputs.proto is not None)
        out = {"box": lbox * gains["box"], "obj": lobj * gains["obj"], "cls": lcls * gains["cls"]}
        aux = [p.float() for p in outputs.aux or []]
        if aux:  # YOLOv7's auxiliary heads: the same terms on the same targets, at a quarter weight
            abox, aobj, acls, _ = self._levels(aux, outputs, batch, with_masks=False)
            out = {"box": out["box"] + 0.25 * abox * gains["box"], "obj": out["obj"] + 0.25 * aobj * gains["obj"],
                   "cls": out["cls"] + 0.25 * acls * gains["cls"]}
        if outputs.proto is not None:
            out["seg"] = lseg * gains["seg"]
        return out, _zero_touch(outputs, preds + aux)

    def _levels(self, preds: list[Tensor], outputs: HeadOutput, batch: Batch, with_masks: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ungained (box, obj, cls, seg) summed over levels. The mask term is YOLOv5-seg's: per level
        and image the mean over that image's positives, summed, divided by the batch size."""
        nl, nc, dev = len(preds), outputs.nc, preds[0].device
        balance = self._balance(nl)
        eps = self.g.label_smoothing
        cp, cn = 1.0 - 0.5 * eps, 0.5 * eps
        xywh = xyxy_to_xywh(batch.boxes.float().to(dev))
        lbox, lobj, lcls, lseg = (torch.zeros((), device=dev) for _ in range(4))
        for i, p in enumerate(preds):
            stride = float(outputs.strides[i])
            m = match_anchors(xywh / stride, batch.batch_idx.to(dev), outputs.anchors[i].float().to(dev) / stride,
                              tuple(p.shape[2:4]), self.g.anchor_t)
            tobj = torch.zeros(p.shape[:4], device=dev)
            if len(m.target):
                ps = p[m.image, m.anchor_idx, m.gj, m.gi]  # (N, 5+nc+nm)
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * m.anchor
                iou = bbox_iou(xywh_to_xyxy(torch.cat((pxy, pwh), 1)), xywh_to_xyxy(m.tbox), ciou=True)
                lbox = lbox + (1.0 - iou).mean()
                flat = ((m.image * p.shape[1] + m.anchor_idx) * p.shape[2] + m.gj) * p.shape[3] + m.gi
                # Several targets on one cell: the best IoU wins (deterministic, unlike an overwrite).
                tobj.view(-1).scatter_reduce_(0, flat, iou.detach().clamp(min=0), reduce="amax")
                tcls = torch.full((len(ps), nc), cn, device=dev)
                tcls[torch.arange(len(ps), device=dev), batch.classes.to(dev)[m.target]] = cp
                lcls = lcls + bce(ps[:, 5:5 + nc], tcls, self.g.cls_pw, self.g.fl_gamma).mean()
                if with_masks:
                    per = _seg_losses(outputs, batch, ps[:, 5 + nc:], m.image, m.target)
                    lseg = lseg + _per_image_mean(per, m.image, p.shape[0]).sum()
            lobj = lobj + bce(p[..., 4], tobj, self.g.obj_pw, self.g.fl_gamma).mean() * balance[i]
        return lbox, lobj, lcls, lseg / preds[0].shape[0]


def _per_image_mean(values: Tensor, img: Tensor, b: int) -> Tensor:
    """(N,) values of positives in images `img` -> (b,) per-image means (0 for images without any)."""
    sums = values.new_zeros(b).index_add_(0, img, values)
    counts = torch.bincount(img, minlength=b).clamp(min=1)
    return sums / counts


class AnchorFreeLoss(Criterion):
    """Anchor-free loss: task-aligned assignment, CIoU + distribution focal loss, soft-target BCE, masks."""

    kind = "anchor_free"

    def __init__(self, gains: LossGains):
        self.g = gains
        self.assigner = TaskAlignedAssigner(gains.tal_topk, gains.tal_alpha, gains.tal_beta)

    def terms(self, outputs: HeadOutput, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        preds = [p.float() for p in outputs.preds]
        r, b, dev = outputs.reg_max, preds[0].shape[0], preds[0].device
        dist_logits, cls_logits, coef = _split_free(outputs, preds)
        points, steps = anchor_points([tuple(p.shape[-2:]) for p in preds], outputs.strides.float().to(dev))
        bins = torch.arange(r, device=dev, dtype=torch.float32)
        pred_boxes = dist_to_bbox(points, (dist_logits.softmax(-1) @ bins) * steps)  # (B,A,4) xyxy px
        gt_boxes, gt_labels, gt_valid, gt_index = _pad_targets(batch, b, dev)
        t = self.assigner(cls_logits.detach().sigmoid(), pred_boxes.detach(), points, gt_labels, gt_boxes, gt_valid)
        norm = t.scores.sum().clamp(min=1.0)
        lcls = bce(cls_logits, t.scores).sum() / norm
        lbox, ldfl = torch.zeros((), device=dev), torch.zeros((), device=dev)
        if t.fg.any():
            w = t.scores.sum(-1)[t.fg]  # (N,) positive weights
            iou = bbox_iou(pred_boxes[t.fg], t.boxes[t.fg], ciou=True)
            lbox = ((1.0 - iou) * w).sum() / norm
            a_idx = t.fg.nonzero()[:, 1]  # anchor of each positive
            target_dist = bbox_to_dist(points[a_idx], t.boxes[t.fg]) / steps[a_idx]
            ldfl = (dfl_loss(dist_logits[t.fg], target_dist.clamp(0, r - 1 - 0.01)) * w).sum() / norm
        out = {"box": lbox * self.g.box_af, "cls": lcls * self.g.cls_af, "dfl": ldfl * self.g.dfl}
        if outputs.proto is not None:  # the mean over all positives, as Ultralytics' anchor-free seg loss
            per = outputs.proto.new_zeros(0)
            if t.fg.any():
                imgs = torch.arange(b, device=dev)[:, None].expand(-1, t.fg.shape[1])[t.fg]
                per = _seg_losses(outputs, batch, coef[t.fg], imgs, gt_index.gather(1, t.target)[t.fg])
            lseg = per.float().mean() if len(per) else per.new_zeros(())
            out["seg"] = lseg * self.g.seg * self.g.box_af
        return out, _zero_touch(outputs, preds)


def _split_free(outputs: HeadOutput, preds: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Anchor-free preds -> bin logits (B,A,4,reg_max), class logits (B,A,nc), coefficients (B,A,nm)."""
    nc, nm, r = outputs.nc, outputs.nm, outputs.reg_max
    flat = torch.cat([p.flatten(2) for p in preds], 2).transpose(1, 2)  # (B,A,4r+nc+nm), levels in order
    if flat.shape[-1] != 4 * r + nc + nm:
        raise ValueError(f"losses: anchor-free preds have {flat.shape[-1]} channels, expected 4*{r}+{nc}+{nm}")
    return flat[..., :4 * r].reshape(*flat.shape[:2], 4, r), flat[..., 4 * r:4 * r + nc], flat[..., 4 * r + nc:]


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """logits: (N,4,R) bin logits; target: (N,4) in bins, 0..R-1 exclusive -> (N,) distribution focal loss.

    Cross-entropy towards the two bins around the target, weighted by linear interpolation."""
    left = target.floor().long()
    w_right = target - left
    lp = logits.log_softmax(-1)
    nll_l = -lp.gather(-1, left[..., None])[..., 0]
    nll_r = -lp.gather(-1, (left + 1)[..., None])[..., 0]
    return (nll_l * (1 - w_right) + nll_r * w_right).mean(-1)


def _pad_targets(batch: Batch, b: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Instances -> per-image padded (B,M,4) xyxy boxes, (B,M) labels, (B,M) valid, (B,M) batch index."""
    idx = batch.batch_idx.to(dev).long()
    counts = torch.bincount(idx, minlength=b) if len(idx) else torch.zeros(b, dtype=torch.long, device=dev)
    m = int(counts.max()) if len(counts) else 0
    boxes = torch.zeros((b, m, 4), device=dev)
    labels = torch.zeros((b, m), dtype=torch.long, device=dev)
    valid = torch.zeros((b, m), dtype=torch.bool, device=dev)
    index = torch.zeros((b, m), dtype=torch.long, device=dev)
    if len(idx):
        order = torch.argsort(idx, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(idx), device=dev) - starts[idx[order]]
        boxes[idx[order], slot] = batch.boxes.to(dev).float()[order]
        labels[idx[order], slot] = batch.classes.to(dev).long()[order]
        valid[idx[order], slot] = True
        index[idx[order], slot] = order
    return boxes, labels, valid, index


def _seg_losses(outputs: HeadOutput, batch: Batch, coef: Tensor, img: Tensor, tgt: Tensor) -> Tensor:
    """(N,) mask loss of each positive (coefficients coef (N,nm) in image img, of instance tgt)."""
    proto = outputs.proto.float()
    h, w = _input_hw(outputs)
    masks = batch.masks.to(proto.device)
    if masks.shape[-2:] != proto.shape[-2:]:  # e.g. a batch collated at another size
        masks = F.interpolate(masks[None].float(), size=proto.shape[-2:], mode="nearest")[0]
    scale = proto.new_tensor([proto.shape[-1] / w, proto.shape[-2] / h] * 2)
    boxes = batch.boxes.to(proto.device).float() * scale
    return mask_losses(coef.float(), proto, img, tgt, masks, boxes)


def mask_losses(coef: Tensor, proto: Tensor, img: Tensor, tgt: Tensor, masks: Tensor, boxes: Tensor) -> Tensor:
    """(N,) per positive: the BCE summed inside its gt box / the box's area (all at proto resolution).

    coef: (N,nm) per-positive coefficients; proto: (B,nm,h,w); img: (N,) image of each positive;
    tgt: (N,) instance index; masks: (M,h,w) gt masks; boxes: (M,4) xyxy in proto pixels."""
    out = proto.new_zeros(len(coef))
    if len(coef) == 0:
        return out
    h, w = proto.shape[-2:]
    for b in img.unique().tolist():  # per image: bounds the (n,h,w) temporaries
        sel = img == b
        logits = (coef[sel] @ proto[b].flatten(1)).view(-1, h, w)
        t = tgt[sel]
        loss = F.binary_cross_entropy_with_logits(logits, masks[t].float(), reduction="none")
        box = boxes[t]
        area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).clamp(min=1e-9)
        out[sel] = (loss * box_mask(box, h, w, centre=0.0)).sum((1, 2)) / area
    return out


def build_criterion(gains: LossGains, kind: str, img_size: int = 640) -> Criterion:
    """kind: "anchor" or "anchor_free"; img_size scales the obj gain."""
    if kind == "anchor":
        return AnchorLoss(gains, img_size)
    if kind == "anchor_free":
        return AnchorFreeLoss(gains)
    raise ValueError(f"losses: unknown head kind '{kind}' (expected 'anchor' or 'anchor_free')")

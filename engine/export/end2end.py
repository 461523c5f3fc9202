"""The end-to-end graph: the model, then class-aware NMS through the standard ONNX
NonMaxSuppression op (onnxruntime, OpenVINO and TensorRT all run it), the top K per image, and for
segmentation models the masks assembled from coefficients and prototypes, all inside the export.

Outputs (see utils.structures.End2EndOutput): num_dets (B,1), boxes (B,K,4) xyxy input pixels,
scores (B,K), classes (B,K) and masks (B,K,H/4,W/4); rows past num_dets are zero. The selection
equals utils.postprocess: boxes above conf_thres (per class with multi_label, else each box's best
class), NMS per class at iou_thres, the K best of each image kept.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from utils.masks import crop_to_boxes

OUTPUTS = ("num_dets", "boxes", "scores", "classes", "masks")


class BatchedNMS(torch.autograd.Function):
    """boxes (B,N,4) xyxy, scores (B,C,N) -> (M,3) int64 rows [image, class, box] kept by NMS per
    image and class: the ONNX NonMaxSuppression contract. In PyTorch (and while tracing) it is
    torchvision's NMS; a class may keep more than max_per_class here, which changes no image's
    top max_per_class."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_thres: float,
                conf_thres: float) -> Tensor:
        b, c, n = (scores > conf_thres).nonzero(as_tuple=True)
        keep = batched_nms(boxes[b, n], scores[b, c, n], b * scores.shape[1] + c, iou_thres)
        return torch.stack((b, c, n), 1)[keep]

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_thres: float, conf_thres: float):
        const = lambda v, dtype: g.op("Constant", value_t=torch.tensor([v], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou_thres, torch.float32), const(conf_thres, torch.float32), center_point_box_i=0)


class End2End(nn.Module):
    """model(images) -> detections; model: eval-mode, returns (pred (B,N,4+nc+nm), proto or None)."""

    def __init__(self, model: nn.Module, nc: int, nm: int, conf_thres: float = 0.25, iou_thres: float = 0.45,
                 topk: int = 100, multi_label: bool = False):
        super().__init__()
        if not 0.0 <= conf_thres < 1.0 or not 0.0 < iou_thres <= 1.0 or topk < 1:
            raise ValueError(f"end-to-end export: need 0 <= --conf-thres < 1 (got {conf_thres}), "
                             f"0 < --iou-thres <= 1 (got {iou_thres}), --topk-all >= 1 (got {topk})")
        self.model, self.nc, self.nm = model, nc, nm
        self.conf_thres, self.iou_thres, self.topk, self.multi_label = conf_thres, iou_thres, topk, multi_label
        self.eval()

    def forward(self, images: Tensor):
        pred, proto = self.model(images)
        boxes, scores, coefs = pred[..., :4], pred[..., 4:4 + self.nc], pred[..., 4 + self.nc:]
        if not self.multi_label:  # each box competes only in its best class
            best = scores.argmax(-1, keepdim=True)
            scores = scores * (torch.arange(self.nc, device=scores.device) == best)
        sel = BatchedNMS.apply(boxes, scores.transpose(1, 2).contiguous(), self.topk, self.iou_thres,
                               self.conf_thres)
        img, cls, box, score = self._top_k(sel, scores, images.shape[0])
        valid = score >= 0
        rows = img * pred.shape[1] + box  # (B,K) into the flattened (B*N) anchors; plain Gather
        out_boxes = boxes.reshape(-1, 4)[rows] * valid[..., None]
        outs = [valid.sum(1, keepdim=True, dtype=torch.int32), out_boxes, score.clamp(min=0),
                torch.where(valid, cls, torch.zeros_like(cls)).to(torch.int32)]
        if proto is not None:
            outs.append(self._masks(coefs.reshape(-1, self.nm)[rows] * valid[..., None], proto, out_boxes,
                                    images.shape[-2:]))
        return tuple(outs)

    def _top_k(self, sel: Tensor, scores: Tensor, batch: int):
        """The K best of sel's rows per image: (image, class, box) int64 (B,K) and score (B,K), -1
        where an image has fewer. Rows of all images are ranked in one (B, M+K) table, padded by K
        columns so that top-k has K to choose from even when nothing was kept."""
        k = self.topk
        pad = sel.new_zeros((k, 3))
        img, cls, box = torch.cat((sel, pad)).unbind(1)
        n, c = scores.shape[1], scores.shape[2]
        score = scores.flatten().gather(0, (img * n + box) * c + cls)
        real = torch.cat((torch.ones_like(sel[:, 0]), pad[:, 0])).bool()
        mine = real[None] & (img[None] == torch.arange(batch, device=sel.device)[:, None])  # (B, M+K)
        table = torch.where(mine, score[None], torch.full_like(score[None], -1.0))
        top, idx = table.topk(k, dim=1)
        return img[idx], cls[idx], box[idx], top

    @staticmethod
    def _masks(coefs: Tensor, proto: Tensor, boxes: Tensor, input_shape) -> Tensor:
        """(B,K,nm) coefficients x (B,nm,h,w) prototypes -> (B,K,h,w) probabilities cropped to the
        boxes at prototype resolution, as utils.masks.decode_masks does."""
        b, nm, h, w = proto.shape
        k = coefs.shape[1]
        probs = (coefs @ proto.reshape(b, nm, -1)).sigmoid().reshape(-1, h, w)
        scale = boxes.new_tensor([w / input_shape[1], h / input_shape[0]] * 2)
        return crop_to_boxes(probs, (boxes * scale).reshape(-1, 4)).reshape(b, k, h, w)

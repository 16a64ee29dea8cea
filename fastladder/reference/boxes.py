"""Pure-PyTorch references of the box operators (fastladder.ops.boxes): the specification and the
test oracle. Plain loops where that is clearest; they never call fastladder._C."""
import math
from typing import List, Sequence, Tuple

import torch

__all__ = ["box_iou", "nms", "batched_nms", "encode_boxes", "decode_boxes", "ssd_postprocess"]

BOX_SCALE_CLIP = math.log(1000.0 / 16)


def _opmath(t: torch.Tensor) -> torch.Tensor:
    """float32 for float16/bfloat16 (the kernels' accumulation type), else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, 4] x [M, 4] -> [N, M] intersection areas (0 for disjoint or inverted boxes)."""
    w = (torch.minimum(a[:, None, 2], b[None, :, 2])
         - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3])
         - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    return w * h


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 4] x Tensor[M, 4] -> Tensor[N, M]: inter / union, 0 where the union is not positive."""
    a, b = _opmath(boxes1), _opmath(boxes2)
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    iou = torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)),
                      torch.zeros_like(inter))
    return iou.to(boxes1.dtype)


def _finite_rows(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS, torchvision's rule, written out: visit boxes by decreasing score (stable), keep a
    box unless a kept box has IoU > iou_threshold with it. IoU in the opmath dtype, one division
    (inter / (area_kept + area_box - inter)), compared with the threshold in float64. Non-finite
    boxes or scores are dropped. Returns Tensor[int64] of kept indices, by decreasing score."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    valid = torch.nonzero(_finite_rows(boxes, scores)).flatten()
    b, s = _opmath(boxes[valid]), _opmath(scores[valid])
    order = torch.sort(s, descending=True, stable=True).indices
    b = b[order]
    area = _area(b)
    inter = _intersection(b, b)
    # torchvision's expression (no zero-union guard: 0/0 is NaN, and NaN > t is false)
    over = (inter / (area[:, None] + area[None, :] - inter)).double() > iou_threshold
    removed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    keep_t = torch.tensor(keep, dtype=torch.int64)
    return valid[order[keep_t]] if keep else torch.empty(0, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """nms per category (torchvision's per-class form); kept indices by decreasing score, ties by
    increasing index."""
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for category in torch.unique(idxs):
        members = torch.nonzero(idxs == category).flatten()
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep).flatten()
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.2)) -> torch.Tensor:
    """Tensor[..., P, 4] offsets and Tensor[P, 4] (cx, cy, w, h) priors -> Tensor[..., P, 4] xyxy."""
    d, p = _opmath(loc), _opmath(priors)
    # torchvision's BoxCoder form: divide by the weights 1 / variance
    w_center, w_size = 1.0 / variances[0], 1.0 / variances[1]
    center = d[..., :2] / w_center * p[:, 2:] + p[:, :2]
    # clamp(max=) propagates NaN, as the kernels' clamp does
    half = 0.5 * (torch.exp((d[..., 2:] / w_size).clamp(max=BOX_SCALE_CLIP)) * p[:, 2:])
    return torch.cat([center - half, center + half], dim=-1).to(loc.dtype)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.2)) -> torch.Tensor:
    """Tensor[..., P, 4] xyxy boxes and Tensor[P, 4] priors -> Tensor[..., P, 4] (dx, dy, dw, dh)."""
    b, p = _opmath(boxes), _opmath(priors)
    w_center, w_size = 1.0 / variances[0], 1.0 / variances[1]
    size = b[..., 2:] - b[..., :2]
    center = b[..., :2] + 0.5 * size
    offsets = w_center * (center - p[:, :2]) / p[:, 2:]
    scales = w_size * torch.log(size / p[:, 2:])
    return torch.cat([offsets, scales], dim=-1).to(boxes.dtype)


def ssd_postprocess(loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor, *,
                    score_thresh: float = 0.01, nms_thresh: float = 0.45, topk: int = 400,
                    max_detections: int = 200, variances: Sequence[float] = (0.1, 0.2),
                    background: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's SSD postprocess_detections, image by image and class by class:
    softmax; decode; clip to [0, 1]; per class (but background) the scores > score_thresh, top
    `topk` (ties by prior index); concatenate the classes; NMS per class; the first
    max_detections by decreasing score (stable). Priors whose logits or decoded box are not
    finite are dropped. Returns (boxes [B, K, 4], scores [B, K], labels [B, K], num_detections [B])
    padded with zeros and label -1."""
    batch, _, classes = conf_logits.shape
    k_out = max_detections
    out_boxes = loc.new_zeros((batch, k_out, 4))
    out_scores = loc.new_zeros((batch, k_out))
    out_labels = torch.full((batch, k_out), -1, dtype=torch.int64, device=loc.device)
    counts = torch.zeros(batch, dtype=torch.int64, device=loc.device)
    probabilities = torch.softmax(_opmath(conf_logits), dim=-1)
    boxes_all = decode_boxes(_opmath(loc), _opmath(priors), variances)
    for b in range(batch):
        boxes = boxes_all[b]
        finite = torch.isfinite(boxes).all(dim=1)
        boxes = boxes.clamp(0, 1)
        image_boxes: List[torch.Tensor] = []
        image_scores: List[torch.Tensor] = []
        image_labels: List[torch.Tensor] = []
        for label in range(classes):
            if label == background:
                continue
            score = probabilities[b, :, label]
            candidates = torch.nonzero((score > score_thresh) & finite).flatten()
            order = torch.sort(score[candidates], descending=True, stable=True).indices[:topk]
            candidates = candidates[order]
            image_boxes.append(boxes[candidates])
            image_scores.append(score[candidates])
            image_labels.append(torch.full((len(candidates),), label, dtype=torch.int64, device=loc.device))
        if not image_boxes:  # every class is the background
            continue
        all_boxes = torch.cat(image_boxes)
        all_scores = torch.cat(image_scores)
        all_labels = torch.cat(image_labels)
        keep = batched_nms(all_boxes, all_scores, all_labels, nms_thresh)[:k_out]
        n = len(keep)
        out_boxes[b, :n] = all_boxes[keep].to(loc.dtype)
        out_scores[b, :n] = all_scores[keep].to(loc.dtype)
        out_labels[b, :n] = all_labels[keep]
        counts[b] = n
    return out_boxes, out_scores, out_labels, counts

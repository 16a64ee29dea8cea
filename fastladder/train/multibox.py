"""SSD training: matching priors to ground truth and the MultiBox loss (Liu et al., ECCV 2016).

Everything is batched over the images and the priors (no Python loop over either): one
``box_iou`` call for the whole batch's ground truth, the forced best-prior assignment by a
scatter, hard negatives by a per-image sort-based rank. The loop-by-loop specification is
:mod:`fastladder.reference.multibox`.

Conventions: ground-truth boxes are image-relative ``(x1, y1, x2, y2)`` (the priors' units),
labels are class indices ``1 … C-1`` (0 is the background class, never a ground-truth label),
and padding rows of a batch have label -1.
"""
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastladder.ops.boxes import box_iou, encode_boxes

__all__ = ["pad_ground_truth", "priors_to_xyxy", "match_priors", "MultiBoxLoss"]

BoxesLike = Union[torch.Tensor, Sequence[torch.Tensor]]


def priors_to_xyxy(priors: torch.Tensor) -> torch.Tensor:
    """Tensor[P, 4] ``(cx, cy, w, h)`` → Tensor[P, 4] ``(x1, y1, x2, y2)``."""
    half = 0.5 * priors[:, 2:]
    return torch.cat([priors[:, :2] - half, priors[:, :2] + half], dim=1)


def pad_ground_truth(gt_boxes: BoxesLike, gt_labels: BoxesLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image ground truth as one padded batch.

    Args:
        gt_boxes: Tensor[B, M, 4], or a list of B tensors [M_b, 4] (``(x1, y1, x2, y2)``).
        gt_labels: Tensor[B, M] (int, -1 = padding), or a list of B tensors [M_b].

    Returns:
        (boxes [B, M, 4], labels [B, M] int64) with M = max M_b; padding rows are zero boxes with
        label -1. Padded tensors are returned as they are (labels as int64).
    """
    if isinstance(gt_boxes, torch.Tensor) != isinstance(gt_labels, torch.Tensor):
        raise ValueError(f"gt_boxes and gt_labels must both be tensors or both lists, got "
                         f"{type(gt_boxes).__name__} and {type(gt_labels).__name__}")
    if isinstance(gt_boxes, torch.Tensor):
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4 or gt_labels.dim() != 2 \
                or gt_labels.shape != gt_boxes.shape[:2]:
            raise ValueError(f"gt_boxes must be [B, M, 4] and gt_labels [B, M], got {tuple(gt_boxes.shape)} "
                             f"and {tuple(gt_labels.shape)}")
        if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
            raise ValueError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")
        return gt_boxes, gt_labels.long()
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"gt_boxes and gt_labels must have one entry per image, got {len(gt_boxes)} and "
                         f"{len(gt_labels)}")
    if len(gt_boxes) == 0:
        raise ValueError("gt_boxes is an empty list: give one (possibly empty [0, 4]) tensor per image")
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"image {b}: gt_boxes[{b}] must be [M, 4] and gt_labels[{b}] [M], got "
                             f"{tuple(boxes.shape)} and {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"gt_labels[{b}] must be an integer tensor, got {labels.dtype}")
    batch, most = len(gt_boxes), max(boxes.shape[0] for boxes in gt_boxes)
    first = gt_boxes[0]
    boxes_out = first.new_zeros((batch, most, 4))
    labels_out = torch.full((batch, most), -1, dtype=torch.int64, device=first.device)
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        boxes_out[b, :boxes.shape[0]] = boxes
        labels_out[b, :labels.shape[0]] = labels
    return boxes_out, labels_out


def _check_ground_truth(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int = 0):
    """Valid rows: finite boxes with x2 > x1, y2 > y1 and labels ≥ 1 (< num_classes when given).

    On CPU a ValueError names the first bad row; elsewhere an asynchronous device assert (no sync)."""
    valid = labels >= 0
    good_box = torch.isfinite(boxes).all(-1) & (boxes[..., 2] > boxes[..., 0]) & \
        (boxes[..., 3] > boxes[..., 1])
    good_label = labels >= 1
    if num_classes:
        good_label &= labels < num_classes
    bad = valid & ~(good_box & good_label)
    if boxes.device.type != "cpu":
        torch._assert_async(~bad.any(),
                            "ground truth: a box is empty or not finite, or a label is 0 or out of range")
        return
    if bad.any():
        b, m = (int(v) for v in torch.nonzero(bad)[0])
        label_range = f"1 … {num_classes - 1}" if num_classes else "≥ 1"
        raise ValueError(f"ground truth of image {b}, row {m}: box {boxes[b, m].tolist()} with label "
                         f"{int(labels[b, m])}; boxes must be finite (x1, y1, x2, y2) with x2 > x1 and "
                         f"y2 > y1, labels {label_range} (0 is the background, -1 marks padding)")


def match_priors(gt_boxes: BoxesLike, gt_labels: BoxesLike, priors: torch.Tensor,
                 iou_threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """SSD's matching of priors to ground truth, for a whole batch.

    1. Every ground truth takes the prior it overlaps most (IoU; ties: the lowest prior index),
       even when that IoU is at most ``iou_threshold``. When several ground truths pick the same
       prior, the one with the highest IoU with it wins (ties: the lowest ground-truth index).
    2. Every other prior whose best IoU over the image's ground truth is > ``iou_threshold``
       takes that ground truth (ties: the lowest index). A forced assignment of step 1 is never
       overridden by step 2.
    3. All other priors are background (label 0); their "matched box" is the prior itself, so
       that their encoded offsets are 0 (they are not used by the box loss).

    Args:
        gt_boxes: Tensor[B, M, 4] image-relative ``(x1, y1, x2, y2)`` (or a list of [M_b, 4]).
        gt_labels: Tensor[B, M] class indices ≥ 1, -1 for padding rows (or a list of [M_b]).
        priors (Tensor[P, 4]): ``(cx, cy, w, h)``, image-relative.
        iou_threshold: the IoU a prior must exceed to take a ground truth in step 2.

    Returns:
        (matched_boxes [B, P, 4] in the priors' dtype, labels [B, P] int64, 0 = background).
    """
    boxes, labels = pad_ground_truth(gt_boxes, gt_labels)
    if priors.dim() != 2 or priors.shape[1] != 4:
        raise ValueError(f"priors must be a [P, 4] tensor of (cx, cy, w, h), got shape {tuple(priors.shape)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if boxes.device != priors.device:
        raise ValueError(f"gt_boxes are on {boxes.device} and priors on {priors.device}")
    _check_ground_truth(boxes, labels)
    return _match_padded(boxes, labels, priors, iou_threshold)


def _match_padded(boxes: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor,
                  iou_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`match_priors` on checked, padded ground truth."""
    batch, num_gt, num_priors = boxes.shape[0], boxes.shape[1], priors.shape[0]
    boxes = boxes.to(priors.dtype)
    priors_xyxy = priors_to_xyxy(priors)
    background = priors_xyxy.expand(batch, num_priors, 4)
    if num_gt == 0 or num_priors == 0:
        return background.clone(), torch.zeros(batch, num_priors, dtype=torch.int64, device=priors.device)

    valid = labels >= 0                                                            # [B, M]
    iou = box_iou(boxes.reshape(-1, 4), priors_xyxy).view(batch, num_gt, num_priors)
    iou = iou.masked_fill(~valid[..., None], -1.0)  # padding never wins and is never forced
    best_overlap = iou.amax(dim=1)                                                 # [B, P]
    best_gt = iou.argmax(dim=1)                                  # [B, P], the first max: lowest gt index
    best_prior = iou.argmax(dim=2)                               # [B, M], lowest prior index
    forced = torch.zeros_like(iou, dtype=torch.bool).scatter_(2, best_prior[..., None], True)
    forced &= valid[..., None]
    # among ground truths forcing the same prior, the highest IoU (then the lowest index) wins
    owner = torch.where(forced, iou, torch.full_like(iou, -2.0)).argmax(dim=1)   # [B, P]
    is_forced = forced.any(dim=1)
    gt_index = torch.where(is_forced, owner, best_gt)
    positive = is_forced | (best_overlap > iou_threshold)
    matched_labels = torch.where(positive, labels.gather(1, gt_index), torch.zeros_like(gt_index))
    matched = boxes.gather(1, gt_index[..., None].expand(batch, num_priors, 4))
    matched_boxes = torch.where(positive[..., None], matched, background)
    return matched_boxes, matched_labels


class MultiBoxLoss(nn.Module):
    """The SSD loss: smooth L1 on the positives' box offsets plus softmax cross-entropy on the
    positives and on the hardest negatives, both divided by the number of positives.

    Per batch: match the priors (:func:`match_priors`), encode the matched boxes as targets
    (:func:`fastladder.ops.encode_boxes`, ``(cx, cy, log w, log h)`` offsets divided by the
    variances). Box loss: ``sum over positives of smooth_l1(loc - target, beta=1)``. Confidence
    loss: cross-entropy over the positives and, per image, the ``neg_pos_ratio · num_positives``
    (rounded down, at least ``min_negatives``, at most the image's negatives) background priors
    with the highest cross-entropy (hard negative mining; ties go to the lower prior index). Both
    sums are divided by N = the batch's number of positives; when N = 0 they are divided by 1
    instead: the box loss is then 0 and the confidence loss is that of the mined negatives (none
    unless ``min_negatives`` > 0, so a batch without objects gives a zero loss by default, as in
    the paper where the loss is defined only for N > 0).

    Args:
        num_classes: C, including the background class 0.
        neg_pos_ratio: negatives per positive (3).
        iou_threshold: matching threshold (0.5).
        variances: the box coding's (center, size) variances (0.1, 0.2).
        min_negatives: hard negatives per image even without positives (0: the paper's rule).

    Shape:
        forward(loc [B, P, 4], conf_logits [B, P, C], priors [P, 4], gt_boxes [B, M, 4] or list,
        gt_labels [B, M] or list) → (loss, {"loc": box loss, "conf": confidence loss}), scalars,
        ``loss = loc + conf``; the parts are detached (for logging).
    """

    def __init__(self, num_classes: int, neg_pos_ratio: float = 3, iou_threshold: float = 0.5,
                 variances: Sequence[float] = (0.1, 0.2), min_negatives: int = 0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}")
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be ≥ 0, got {neg_pos_ratio}")
        if min_negatives < 0:
            raise ValueError(f"min_negatives must be ≥ 0, got {min_negatives}")
        if len(variances) != 2:
            raise ValueError(f"variances must be two numbers (center, size), got {variances!r}")
        self.num_classes = int(num_classes)
        self.neg_pos_ratio = float(neg_pos_ratio)
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.variances = tuple(float(v) for v in variances)
        self.min_negatives = int(min_negatives)

    def forward(self, loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor, gt_boxes: BoxesLike,
                gt_labels: BoxesLike) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if loc.dim() != 3 or loc.shape[-1] != 4 or conf_logits.dim() != 3 \
                or conf_logits.shape[:2] != loc.shape[:2] or conf_logits.shape[-1] != self.num_classes:
            raise ValueError(f"loc must be [B, P, 4] and conf_logits [B, P, {self.num_classes}], got "
                             f"{tuple(loc.shape)} and {tuple(conf_logits.shape)}")
        if priors.dim() != 2 or priors.shape != (loc.shape[1], 4):
            raise ValueError(f"priors must be [P, 4] with P = {loc.shape[1]} (loc {tuple(loc.shape)}), got "
                             f"{tuple(priors.shape)}; for inputs other than the model's image_size use "
                             f"model.priors_for((H, W))")
        boxes, labels = pad_ground_truth(gt_boxes, gt_labels)
        if boxes.shape[0] != loc.shape[0]:
            raise ValueError(f"ground truth for {boxes.shape[0]} images, predictions for {loc.shape[0]}")
        _check_ground_truth(boxes, labels, self.num_classes)
        batch, num_priors = loc.shape[:2]
        if boxes.device != priors.device:
            raise ValueError(f"gt_boxes are on {boxes.device} and priors on {priors.device}")
        with torch.no_grad():
            matched, matched_labels = _match_padded(boxes, labels, priors, self.iou_threshold)
            targets = encode_boxes(matched, priors, self.variances)
        positive = matched_labels > 0                                              # [B, P]
        num_positive = positive.sum(dim=1)                                         # [B]

        loc = loc.float() if loc.dtype in (torch.float16, torch.bfloat16) else loc
        box_loss = F.smooth_l1_loss(loc, targets.to(loc.dtype), reduction="none", beta=1.0).sum(dim=-1)
        box_loss = torch.where(positive, box_loss, torch.zeros_like(box_loss)).sum()

        logits = conf_logits.float() if conf_logits.dtype in (torch.float16, torch.bfloat16) else conf_logits
        class_loss = F.cross_entropy(logits.reshape(-1, self.num_classes), matched_labels.reshape(-1),
                                     reduction="none").view(batch, num_priors)
        with torch.no_grad():
            negative = self._hard_negatives(class_loss.detach(), positive, num_positive)
        selected = positive | negative
        conf_loss = torch.where(selected, class_loss, torch.zeros_like(class_loss)).sum()

        normaliser = num_positive.sum().clamp(min=1).to(box_loss.dtype)
        box_loss = box_loss / normaliser
        conf_loss = conf_loss / normaliser
        return box_loss + conf_loss, {"loc": box_loss.detach(), "conf": conf_loss.detach()}

    def _hard_negatives(self, class_loss: torch.Tensor, positive: torch.Tensor,
                        num_positive: torch.Tensor) -> torch.Tensor:
        """BoolTensor[B, P]: per image, the num_negative background priors of highest loss."""
        batch, num_priors = class_loss.shape
        # positives rank after every background prior, so the first num_negative ranks are negatives
        mining = class_loss.masked_fill(positive, float("-inf"))
        order = mining.sort(dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(num_priors, device=order.device).expand(batch, num_priors))
        num_negative = (num_positive.double() * self.neg_pos_ratio).floor().long()
        num_negative = num_negative.clamp(min=self.min_negatives)
        num_negative = torch.minimum(num_negative, num_priors - num_positive)
        return rank < num_negative[:, None]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, neg_pos_ratio={self.neg_pos_ratio}, "
                f"iou_threshold={self.iou_threshold}, variances={self.variances}, "
                f"min_negatives={self.min_negatives}")

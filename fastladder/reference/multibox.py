"""Pure-PyTorch reference of SSD's prior matching and MultiBox loss, written image by image and
ground truth by ground truth: the specification of :mod:`fastladder.train.multibox`, its test
oracle and its benchmark baseline. Uses :mod:`fastladder.reference.boxes`, never fastladder._C."""
import math
from typing import Dict, List, Sequence, Tuple

import torch

from fastladder.reference.boxes import box_iou, encode_boxes

__all__ = ["match_priors", "multibox_loss"]


def _priors_to_xyxy(priors: torch.Tensor) -> torch.Tensor:
    return torch.cat([priors[:, :2] - 0.5 * priors[:, 2:], priors[:, :2] + 0.5 * priors[:, 2:]], dim=1)


def _per_image(gt_boxes, gt_labels) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """[(boxes [G, 4], labels [G])] per image without the padding rows (label -1)."""
    images = []
    for boxes, labels in zip(gt_boxes, gt_labels):
        keep = [m for m in range(len(labels)) if int(labels[m]) >= 0]
        images.append((boxes[keep], labels[keep].long()))
    return images


def match_priors(gt_boxes, gt_labels, priors: torch.Tensor,
                 iou_threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """The matching rule of fastladder.train.multibox.match_priors, one image at a time.

    gt_boxes: [B, M, 4] or a list of [M_b, 4] (xyxy); gt_labels: [B, M] or a list of [M_b], -1 =
    padding; priors [P, 4] (cx, cy, w, h). Returns (matched_boxes [B, P, 4], labels [B, P])."""
    priors_xyxy = _priors_to_xyxy(priors)
    num_priors = priors.shape[0]
    all_boxes, all_labels = [], []
    for boxes, labels in _per_image(gt_boxes, gt_labels):
        matched = priors_xyxy.clone()
        matched_labels = torch.zeros(num_priors, dtype=torch.int64, device=priors.device)
        if len(labels) == 0 or num_priors == 0:
            all_boxes.append(matched)
            all_labels.append(matched_labels)
            continue
        boxes = boxes.to(priors.dtype)
        iou = box_iou(boxes, priors_xyxy)  # [G, P]
        # step 2: each prior's best ground truth (a strictly higher IoU replaces, so ties keep the first)
        best_overlap = torch.full((num_priors,), -1.0, dtype=iou.dtype, device=iou.device)
        best_gt = torch.zeros(num_priors, dtype=torch.int64, device=iou.device)
        for g in range(len(labels)):
            better = iou[g] > best_overlap
            best_overlap[better] = iou[g][better]
            best_gt[better] = g
        positive = best_overlap > iou_threshold
        # step 1: each ground truth's best prior; a prior wanted by several goes to the highest IoU
        owner: Dict[int, int] = {}
        for g in range(len(labels)):
            p = int(torch.argmax(iou[g]))  # the first maximum: the lowest prior index
            if p not in owner or iou[g, p] > iou[owner[p], p]:
                owner[p] = g
        for p, g in owner.items():
            best_gt[p] = g
            positive[p] = True
        matched[positive] = boxes[best_gt[positive]]
        matched_labels[positive] = labels[best_gt[positive]]
        all_boxes.append(matched)
        all_labels.append(matched_labels)
    return torch.stack(all_boxes), torch.stack(all_labels)


def multibox_loss(loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor, gt_boxes, gt_labels, *,
                  neg_pos_ratio: float = 3, iou_threshold: float = 0.5,
                  variances: Sequence[float] = (0.1, 0.2),
                  min_negatives: int = 0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The SSD loss of fastladder.train.multibox.MultiBoxLoss, one image at a time.

    loc [B, P, 4], conf_logits [B, P, C], priors [P, 4]; ground truth as in match_priors.
    Returns (loc + conf, {"loc", "conf"}), both sums divided by max(1, number of positives)."""
    matched, labels = match_priors(gt_boxes, gt_labels, priors, iou_threshold)
    box_sum = loc.new_zeros(())
    conf_sum = loc.new_zeros(())
    total_positive = 0
    for b in range(loc.shape[0]):
        positive = labels[b] > 0
        num_positive = int(positive.sum())
        total_positive += num_positive
        target = encode_boxes(matched[b], priors, variances)
        diff = (loc[b][positive] - target[positive]).abs()
        box_sum = box_sum + torch.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5).sum()
        log_probabilities = torch.log_softmax(conf_logits[b], dim=-1)
        cross_entropy = -log_probabilities[torch.arange(len(labels[b]), device=labels.device), labels[b]]
        conf_sum = conf_sum + cross_entropy[positive].sum()
        negatives = torch.nonzero(~positive).flatten()
        num_negative = min(max(math.floor(num_positive * neg_pos_ratio), min_negatives), len(negatives))
        negative_loss = cross_entropy[negatives]
        hardest = torch.sort(negative_loss.detach(), descending=True, stable=True).indices[:num_negative]
        conf_sum = conf_sum + negative_loss[hardest].sum()
    normaliser = max(1, total_positive)
    box_loss, conf_loss = box_sum / normaliser, conf_sum / normaliser
    return box_loss + conf_loss, {"loc": box_loss.detach(), "conf": conf_loss.detach()}

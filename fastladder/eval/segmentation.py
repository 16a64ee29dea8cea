"""Semantic segmentation metrics, as cityscapesScripts' pixel-level evaluation defines them.

Accumulate ``confusion_matrix`` over a dataset (it adds: matrices of several batches sum), then
call ``mean_iou`` once.
"""
from typing import Dict, Union

import torch

__all__ = ["confusion_matrix", "mean_iou"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Counts of (ground truth, prediction) pairs over all pixels whose target is not ignored.

    Args:
        pred (Tensor[...], integer): predicted class ids in [0, num_classes).
        target (Tensor[...], integer, pred's shape): ground-truth ids in [0, num_classes), or
            ignore_index for pixels that do not count.
        num_classes: C.
        ignore_index: the target value of pixels to skip (predictions there are not checked).

    Returns:
        Tensor[C, C] int64 on pred's device: rows are ground truth, columns are predictions.
    """
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    valid = target != ignore_index
    truth = target[valid].long()
    predicted = pred[valid].long()
    for name, ids in (("target", truth), ("pred", predicted)):
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            bad = ids[(ids < 0) | (ids >= num_classes)].unique()[:10].tolist()
            raise ValueError(f"{name} holds ids outside [0, {num_classes}) "
                             f"(and not ignore_index={ignore_index} in target): {bad}")
    counts = torch.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> Dict[str, Union[float, torch.Tensor]]:
    """Per-class IoU, their mean, and pixel accuracy from a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction has no IoU
    (NaN in ``iou``) and is left out of the mean, as the official Cityscapes evaluation does; a
    class only predicted has IoU 0 and counts.

    Args:
        confusion (Tensor[C, C]): rows ground truth, columns prediction (see confusion_matrix).

    Returns:
        {"miou": float, "iou": Tensor[C] float64 (NaN where undefined), "pixel_accuracy": float}
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {tuple(confusion.shape)}")
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    defined = ~iou.isnan()
    total = confusion.sum()
    return {
        "miou": iou[defined].mean().item() if defined.any() else float("nan"),
        "iou": iou,
        "pixel_accuracy": (true_positive.sum() / total).item() if total > 0 else float("nan"),
    }

"""Evaluation: segmentation metrics (the official Cityscapes pixel-level definitions)."""
from fastladder.eval.segmentation import confusion_matrix, mean_iou

__all__ = ["confusion_matrix", "mean_iou"]

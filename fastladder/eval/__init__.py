"""Evaluation: segmentation metrics (the official Cityscapes pixel-level definitions), multi-scale
inference, and detection Average Precision (VOC, COCO and MOTChallenge rules)."""
from fastladder.eval.detection import average_precision, plot_precision_recall, precision_recall
from fastladder.eval.inference import evaluate_segmentation, format_iou_table, predict, predict_logits
from fastladder.eval.segmentation import confusion_matrix, mean_iou

__all__ = ["confusion_matrix", "mean_iou", "predict_logits", "predict", "evaluate_segmentation",
           "format_iou_table", "average_precision", "precision_recall", "plot_precision_recall"]

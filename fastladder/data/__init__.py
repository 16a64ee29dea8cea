"""Datasets in their official layouts, the built-in synthetic sets, and transforms."""
from fastladder.data.labels import (CITYSCAPES_CLASSES, CITYSCAPES_LABELS, CITYSCAPES_PALETTE, IGNORE_INDEX,
                                    cityscapes_label_to_train_id, cityscapes_train_to_label_id, colorize)

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "CITYSCAPES_PALETTE", "IGNORE_INDEX",
           "cityscapes_label_to_train_id", "cityscapes_train_to_label_id", "colorize"]

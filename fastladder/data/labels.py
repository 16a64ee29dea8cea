"""Class tables of the datasets: Cityscapes label ids, train ids, names and colours.

The Cityscapes table follows the official cityscapesScripts definitions (labels.py there): PNG
label ids 0…33; 19 of them are evaluated and mapped to train ids 0…18; every other id is ignored
(255). License plate (id −1) never appears in the PNGs and is left out.
"""
from typing import NamedTuple, Tuple

import torch

from fastladder.errors import DataError

__all__ = ["Label", "CITYSCAPES_LABELS", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "IGNORE_INDEX",
           "cityscapes_label_to_train_id", "cityscapes_train_to_label_id", "colorize"]

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int          # the value in *_gtFine_labelIds.png
    train_id: int    # 0…18, or IGNORE_INDEX
    color: Tuple[int, int, int]


CITYSCAPES_LABELS: Tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
)

_EVALUATED = sorted((label for label in CITYSCAPES_LABELS if label.train_id != IGNORE_INDEX),
                    key=lambda label: label.train_id)
CITYSCAPES_CLASSES: Tuple[str, ...] = tuple(label.name for label in _EVALUATED)
CITYSCAPES_PALETTE = torch.tensor([label.color for label in _EVALUATED], dtype=torch.uint8)  # [19, 3]


def cityscapes_label_to_train_id(label_ids: torch.Tensor, *, source: str = "label") -> torch.Tensor:
    """Maps Cityscapes label ids (any integer tensor) to train ids (int64, 255 = ignored).

    A value that is not a Cityscapes label id (outside 0…33) is a ValueError naming ``source``
    (e.g. the file it came from) and the offending values.
    """
    lookup = torch.full((256,), -1, dtype=torch.int64)
    for label in CITYSCAPES_LABELS:
        lookup[label.id] = label.train_id
    ids = label_ids.long()
    bad = (ids < 0) | (ids > 255)
    if not bad.any():
        train_ids = lookup[ids]
        bad = train_ids < 0
        if not bad.any():
            return train_ids
    values = torch.unique(ids[bad])[:10].tolist()
    raise DataError(f"{source}: values {values} are not Cityscapes label ids (0…33)")


def cityscapes_train_to_label_id(train_ids: torch.Tensor) -> torch.Tensor:
    """Maps train ids 0…18 back to label ids (uint8, the official submission format); 255 → 0."""
    lookup = torch.zeros(256, dtype=torch.uint8)
    for label in _EVALUATED:
        lookup[label.train_id] = label.id
    ids = train_ids.long()
    if ids.numel() and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"train_ids must lie in 0…255, got values in [{ids.min()}, {ids.max()}]")
    return lookup[ids]


def colorize(train_ids: torch.Tensor, palette: torch.Tensor = CITYSCAPES_PALETTE) -> torch.Tensor:
    """Colours a label map: train_ids [..., H, W] (ints) → uint8 [..., H, W, 3]; ignored and
    unknown ids are black."""
    lookup = torch.zeros(256, 3, dtype=torch.uint8)
    lookup[:palette.shape[0]] = palette
    return lookup[train_ids.long().clamp(0, 255)]

"""CamVid (Brostow et al. 2008) in the layout of the SegNet tutorial (367 train, 101 val, 233 test).

    root/{train,val,test}/{name}.png          RGB images (480×360)
    root/{train,val,test}annot/{name}.png     class indices 0…10, 11 = void

The 11 classes: Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian,
Bicyclist; void (11) becomes 255.
"""
import os
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch

from fastladder.errors import ArgumentError, DataError
from fastladder.data._io import SegmentationDataset, allowed_values_check, check_folder

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "CamVid"]

SPLITS = ("train", "val", "test")
CAMVID_CLASSES: Tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
                                   "Fence", "Car", "Pedestrian", "Bicyclist")
# the SegNet tutorial's colours
CAMVID_PALETTE = torch.tensor([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)], dtype=torch.uint8)
_VOID = 11
_ALLOWED_LABELS = torch.arange(_VOID + 1)


class CamVid(SegmentationDataset):
    """CamVid's 11-class segmentation.

    Args:
        root: the folder holding ``train/``, ``trainannot/``, ``val/``, ``valannot/`` … .
        split: "train", "val" or "test".
        transforms: optional callable ``(image, label) -> (image, label)``.

    ``ds[i]`` is (image uint8 Tensor[3, H, W] RGB, label int64 Tensor[H, W] with 0…10 and
    255 = void) after ``transforms``. Files are sorted by name.
    """

    num_classes = len(CAMVID_CLASSES)
    class_names = CAMVID_CLASSES

    def __init__(self, root: Union[str, os.PathLike], split: str = "train",
                 transforms: Optional[Callable] = None):
        if split not in SPLITS:
            raise ArgumentError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = check_folder(Path(root), "CamVid root")
        self.split = split
        self.palette = CAMVID_PALETTE.clone()
        image_folder = check_folder(self.root / split, f"CamVid split {split!r}")
        label_folder = check_folder(self.root / f"{split}annot", f"CamVid labels of split {split!r}")
        files = []
        for image_path in sorted(image_folder.glob("*.png")):
            label_path = label_folder / image_path.name
            if not label_path.is_file():
                raise DataError(f"image {image_path} has no label file: {label_path} does not exist")
            files.append((image_path, label_path))
        if not files:
            raise DataError(f"CamVid split {split!r}: no *.png images in {image_folder}")
        super().__init__(files, transforms)

    def decode_label(self, values: torch.Tensor, path: Path) -> torch.Tensor:
        allowed_values_check(values, _ALLOWED_LABELS, path, "CamVid class indices (0…10, 11 void)")
        return torch.where(values == _VOID, torch.full_like(values, self.ignore_index), values)

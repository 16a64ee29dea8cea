"""Cityscapes (Cordts et al., CVPR 2016) in its official folder layout.

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Label PNGs hold the 34 label ids (0…33); with ``target="trainIds"`` they are mapped to the 19
evaluated train ids (0…18) and everything else to 255, as cityscapesScripts does.
"""
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch

from fastladder.errors import ArgumentError, DataError
from fastladder.data._io import SegmentationDataset, check_folder
from fastladder.data.labels import (CITYSCAPES_CLASSES, CITYSCAPES_LABELS, CITYSCAPES_PALETTE,
                                    cityscapes_label_to_train_id)

__all__ = ["Cityscapes"]

SPLITS = ("train", "val", "test")
TARGETS = ("trainIds", "labelIds")
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationDataset):
    """The Cityscapes fine-annotation images of one split.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train" (2975 images), "val" (500) or "test" (1525). Test labels are not public, so
            every test label is all 255 (ignore) and its label file is not read (``files`` holds
            ``None`` for it): use the test split for prediction only.
        target: "trainIds" (19 classes, 255 = ignore) or "labelIds" (the 34 raw ids, no mapping;
            ``num_classes`` is then 34 and ``class_names`` / ``palette`` are indexed by label id).
        transforms: optional callable ``(image, label) -> (image, label)``.

    ``ds[i]`` is (image uint8 Tensor[3, H, W] RGB, label int64 Tensor[H, W]) after ``transforms``.
    Files are sorted (city, then file name), so the order is the same on every machine.
    """

    def __init__(self, root: Union[str, os.PathLike], split: str = "train", target: str = "trainIds",
                 transforms: Optional[Callable] = None):
        if split not in SPLITS:
            raise ArgumentError(f"split must be one of {SPLITS}, got {split!r}")
        if target not in TARGETS:
            raise ArgumentError(f"target must be one of {TARGETS}, got {target!r}")
        self.root = Path(root)
        self.split = split
        self.target = target
        check_folder(self.root, "Cityscapes root")
        image_folder = check_folder(self.root / "leftImg8bit" / split, f"Cityscapes split {split!r}")
        label_folder = self.root / "gtFine" / split
        if split != "test":
            check_folder(label_folder, f"Cityscapes labels of split {split!r}")
        files: List[Tuple[Path, Optional[Path]]] = []
        for city in sorted(p for p in image_folder.iterdir() if p.is_dir()):
            for image_path in sorted(city.glob("*" + _IMAGE_SUFFIX)):
                if split == "test":
                    files.append((image_path, None))
                    continue
                stem = image_path.name[:-len(_IMAGE_SUFFIX)]
                label_path = label_folder / city.name / (stem + _LABEL_SUFFIX)
                if not label_path.is_file():
                    raise DataError(f"image {image_path} has no label file: {label_path} does not exist")
                files.append((image_path, label_path))
        if not files:
            raise DataError(f"Cityscapes split {split!r}: no {{city}}/*{_IMAGE_SUFFIX} images under "
                            f"{image_folder}")
        super().__init__(files, transforms)
        if target == "trainIds":
            self.num_classes = len(CITYSCAPES_CLASSES)
            self.class_names = CITYSCAPES_CLASSES
            self.palette = CITYSCAPES_PALETTE.clone()
        else:
            self.num_classes = len(CITYSCAPES_LABELS)
            self.class_names = tuple(label.name for label in CITYSCAPES_LABELS)
            self.palette = torch.tensor([label.color for label in CITYSCAPES_LABELS], dtype=torch.uint8)

    def decode_label(self, values: torch.Tensor, path: Path) -> torch.Tensor:
        # the mapping also validates: ids outside 0…33 raise, naming the file
        train_ids = cityscapes_label_to_train_id(values, source=str(path))
        return train_ids if self.target == "trainIds" else values

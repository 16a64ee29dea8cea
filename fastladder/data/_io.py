"""Reading and writing image and label files, and the base class of the segmentation datasets.

Images come back as uint8 Tensor[3, H, W] (RGB), label maps as int64 Tensor[H, W] holding the
values stored in the file (palette indices for palette PNGs, grey levels otherwise). Every failure
is a ValueError that names the file.
"""
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from fastladder.errors import DataError
from fastladder.data.labels import IGNORE_INDEX

__all__ = ["read_image", "read_label", "write_image", "write_label", "check_folder", "allowed_values_check",
           "SegmentationDataset"]

PathLike = Union[str, os.PathLike]

# PIL modes whose pixel values are class ids as they are (palette indices or grey levels).
_LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L")


def read_image(path: PathLike) -> torch.Tensor:
    """Reads any image pillow can decode as RGB: uint8 Tensor[3, H, W]."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read the image ({error})") from error
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def read_label(path: PathLike) -> torch.Tensor:
    """Reads a label PNG of class ids (palette, 8-bit or 16-bit grey): int64 Tensor[H, W].

    Palette images give their palette indices, not their colours (the VOC convention). A colour
    (RGB) label image is a ValueError: its colours would first need a colour → id table.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _LABEL_MODES:
                raise DataError(f"{path}: a label image must hold class ids (palette or grey PNG), got "
                                f"PIL mode {mode!r} of size {image.size[0]}x{image.size[1]}")
            values = np.asarray(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read the label image ({error})") from error
    return torch.from_numpy(values.astype(np.int64))


def write_image(path: PathLike, image: torch.Tensor) -> None:
    """Writes uint8 Tensor[3, H, W] (RGB) to ``path`` (format from the suffix, e.g. PNG)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


def write_label(path: PathLike, label: torch.Tensor, palette: Optional[torch.Tensor] = None) -> None:
    """Writes integer Tensor[H, W] with values 0…255 as an 8-bit PNG: grey, or a palette PNG when
    ``palette`` (uint8 Tensor[C, 3], C ≤ 256) is given."""
    if label.dim() != 2 or label.is_floating_point():
        raise ValueError(f"label must be an integer [H, W] tensor, got {label.dtype} {tuple(label.shape)}")
    if label.numel() and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0…255 for an 8-bit PNG, got "
                         f"[{label.min()}, {label.max()}]")
    image = Image.fromarray(label.to(torch.uint8).numpy())
    if palette is not None:
        if palette.dim() != 2 or palette.shape[1] != 3 or palette.shape[0] > 256:
            raise ValueError(f"palette must be [C, 3] with C <= 256, got {tuple(palette.shape)}")
        image = image.convert("P")
        image.putpalette(palette.to(torch.uint8).flatten().tolist())
    image.save(path)


def check_folder(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a ValueError naming ``what`` and the path."""
    if not path.is_dir():
        raise DataError(f"{what}: folder {path} does not exist")
    return path


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of (image file, label file) pairs read into (image, label) tensors.

    Subclasses fill ``files`` and the class description (``num_classes``, ``class_names``,
    ``palette``) and implement ``decode_label`` (stored values → train ids, checking them).

    ``ds[i]`` is ``transforms(image, label)`` with image uint8 Tensor[3, H, W] (RGB) and label int64
    Tensor[H, W] of train ids, 255 = ignore; without transforms the pair itself.
    """

    ignore_index = IGNORE_INDEX
    num_classes: int
    class_names: Tuple[str, ...]
    palette: torch.Tensor

    def __init__(self, files: Sequence[Tuple[Path, Optional[Path]]],
                 transforms: Optional[Callable] = None):
        if transforms is not None and not callable(transforms):
            raise ValueError(f"transforms must be callable (image, label) -> (image, label), got "
                             f"{transforms!r}")
        self.files: List[Tuple[Path, Optional[Path]]] = list(files)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.files)

    def decode_label(self, values: torch.Tensor, path: Path) -> torch.Tensor:
        """Stored label values (int64 [H, W]) of file ``path`` → train ids (int64 [H, W])."""
        raise NotImplementedError

    def read_label_file(self, path: Path) -> torch.Tensor:
        """The raw values of one label file (int64 [H, W]); subclasses read other formats here."""
        return read_label(path)

    def load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The untransformed (image, label) pair ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        image_path, label_path = self.files[index]
        image = read_image(image_path)
        if label_path is None:
            return image, torch.full(image.shape[1:], self.ignore_index, dtype=torch.int64)
        values = self.read_label_file(label_path)
        if values.shape != image.shape[1:]:
            raise DataError(f"{image_path} is {image.shape[2]}x{image.shape[1]} (WxH) but its label "
                            f"{label_path} is {values.shape[1]}x{values.shape[0]}")
        return image, self.decode_label(values, label_path)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, label)
        return image, label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(images={len(self)}, num_classes={self.num_classes}, "
                f"transforms={self.transforms!r})")


def allowed_values_check(values: torch.Tensor, allowed: torch.Tensor, path: Path, description: str) -> None:
    """ValueError naming ``path`` when ``values`` holds anything outside the sorted 1-D ``allowed``."""
    present = torch.unique(values)
    bad = present[~torch.isin(present, allowed)]
    if bad.numel():
        raise DataError(f"{path}: label values {bad[:10].tolist()} are not {description}")

"""Pascal VOC (Everingham et al.) segmentation and detection in the official VOCdevkit layout.

    VOCdevkit/VOC{year}/JPEGImages/{id}.jpg
    VOCdevkit/VOC{year}/SegmentationClass/{id}.png     palette PNG: 0 background, 1…20, 255 void
    VOCdevkit/VOC{year}/Annotations/{id}.xml
    VOCdevkit/VOC{year}/ImageSets/Segmentation/{image_set}.txt
    VOCdevkit/VOC{year}/ImageSets/Main/{image_set}.txt

``root`` may be the VOCdevkit folder itself or the folder that holds it.

The SBD augmentation (Hariharan et al., ICCV 2011) used for "train_aug" has the layout
``{sbd_root}/dataset/cls/{id}.mat`` (a MATLAB struct ``GTcls`` whose field ``Segmentation`` is the
class map), ``{sbd_root}/dataset/{train,val}.txt`` and ``{sbd_root}/dataset/img/{id}.jpg``. The
.mat files are read with scipy (imported only then). Where the labels were converted to PNG
(the widespread "SegmentationClassAug" form), put them at ``{sbd_root}/dataset/cls_png/{id}.png``
(or ``{sbd_root}/cls_png/``): a PNG there is used before the .mat file.
"""
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from fastladder.errors import ArgumentError, DataError
from fastladder.data._io import (SegmentationDataset, allowed_values_check, check_folder, read_image,
                                 read_label)

__all__ = ["VOC_CLASSES", "VOC_PALETTE", "voc_colormap", "VOCSegmentation", "VOCDetection",
           "parse_voc_annotation", "read_sbd_mat"]

VOC_CLASSES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
_CLASS_INDEX = {name: index for index, name in enumerate(VOC_CLASSES)}


def voc_colormap(num_colors: int = 256) -> torch.Tensor:
    """The VOC colour map: uint8 Tensor[num_colors, 3]. Index i's colour takes bits 0, 1, 2 of i as the
    most significant bits of R, G, B, bits 3, 4, 5 as the next ones, and so on (index 255 is the void
    colour (224, 224, 192))."""
    if not 0 < num_colors <= 256:
        raise ValueError(f"num_colors must lie in 1…256, got {num_colors}")
    index = torch.arange(num_colors)
    colors = torch.zeros(num_colors, 3, dtype=torch.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colors[:, channel] |= bit << (7 - shift)
    return colors.to(torch.uint8)


VOC_PALETTE = voc_colormap(len(VOC_CLASSES))  # [21, 3]
_ALLOWED_LABELS = torch.tensor(list(range(len(VOC_CLASSES))) + [255])


def _devkit(root: Union[str, os.PathLike]) -> Path:
    root = Path(root)
    check_folder(root, "VOC root")
    return root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root


def _read_ids(path: Path, what: str, allow_empty: bool = False) -> List[str]:
    if not path.is_file():
        raise DataError(f"{what}: list {path} does not exist")
    # detection lists of one class hold "id flag" pairs; the id is the first field
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids and not allow_empty:
        raise DataError(f"{what}: list {path} is empty")
    return ids


def _existing(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a ValueError: "{what}: {path} does not exist"."""
    if not path.is_file():
        raise DataError(f"{what}: {path} does not exist")
    return path


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC semantic segmentation: 21 classes (0 background, 1…20), 255 = void.

    Args:
        root: the VOCdevkit folder, or its parent.
        year: "2012" (the usual one) … "2007".
        image_set: a list in ImageSets/Segmentation ("train", "val", "trainval"), or "train_aug":
            VOC train ∪ SBD train ∪ SBD val, minus every VOC val id (needs ``sbd_root``; ids of
            VOC train keep their VOC labels, the others take SBD's).
        transforms: optional callable ``(image, label) -> (image, label)``.
        sbd_root: the SBD folder (holding ``dataset/``), only for "train_aug".

    ``ds[i]`` is (image uint8 Tensor[3, H, W] RGB, label int64 Tensor[H, W]) after ``transforms``.
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __init__(self, root: Union[str, os.PathLike], year: str = "2012", image_set: str = "train",
                 transforms: Optional[Callable] = None, sbd_root: Optional[Union[str, os.PathLike]] = None):
        year = str(year)
        voc = check_folder(_devkit(root) / f"VOC{year}", f"VOC year {year!r}")
        self.root, self.year, self.image_set = voc, year, image_set
        self.palette = VOC_PALETTE.clone()
        lists = voc / "ImageSets" / "Segmentation"
        if image_set == "train_aug":
            if sbd_root is None:
                raise ArgumentError("image_set 'train_aug' needs sbd_root (the SBD folder holding "
                                    "dataset/cls)")
            files = self._train_aug_files(voc, Path(sbd_root), lists)
        else:
            if sbd_root is not None:
                raise ArgumentError(f"sbd_root is only used by image_set 'train_aug', got image_set "
                                    f"{image_set!r}")
            files = []
            for image_id in _read_ids(lists / f"{image_set}.txt", f"VOC{year} image_set {image_set!r}"):
                image_path = _existing(voc / "JPEGImages" / f"{image_id}.jpg", f"image of id {image_id}")
                label_path = _existing(voc / "SegmentationClass" / f"{image_id}.png",
                                       f"label file of image {image_path}")
                files.append((image_path, label_path))
        super().__init__(files, transforms)

    @staticmethod
    def _train_aug_files(voc: Path, sbd_root: Path, lists: Path) -> List[Tuple[Path, Path]]:
        sbd = check_folder(sbd_root, "sbd_root")
        if (sbd / "dataset").is_dir():
            sbd = sbd / "dataset"
        voc_train = _read_ids(lists / "train.txt", "VOC train list")
        voc_val = set(_read_ids(lists / "val.txt", "VOC val list"))
        sbd_ids = []
        for name in ("train.txt", "val.txt"):
            sbd_ids += _read_ids(sbd / name, f"SBD list {name}", allow_empty=True)
        files: List[Tuple[Path, Path]] = []
        seen = set()
        for image_id in voc_train:
            if image_id in seen or image_id in voc_val:
                continue
            seen.add(image_id)
            image_path = _existing(voc / "JPEGImages" / f"{image_id}.jpg", f"image of id {image_id}")
            files.append((image_path, _existing(voc / "SegmentationClass" / f"{image_id}.png",
                                                f"label file of image {image_path}")))
        for image_id in sbd_ids:
            if image_id in seen or image_id in voc_val:
                continue
            seen.add(image_id)
            image_path = voc / "JPEGImages" / f"{image_id}.jpg"
            if not image_path.is_file():
                image_path = _existing(sbd / "img" / f"{image_id}.jpg",
                                       f"image of SBD id {image_id} (not in {voc / 'JPEGImages'} either)")
            candidates = [sbd / "cls_png" / f"{image_id}.png", sbd.parent / "cls_png" / f"{image_id}.png",
                          sbd / "cls" / f"{image_id}.mat"]
            label_path = next((p for p in candidates if p.is_file()), None)
            if label_path is None:
                raise DataError(f"image {image_path} has no SBD label file: none of "
                                f"{[str(p) for p in candidates]} exists")
            files.append((image_path, label_path))
        # sorted by id, so the order does not depend on which list an id came from
        files.sort(key=lambda pair: pair[0].stem)
        return files

    def read_label_file(self, path: Path) -> torch.Tensor:
        if path.suffix != ".mat":
            return read_label(path)
        return read_sbd_mat(path)

    def decode_label(self, values: torch.Tensor, path: Path) -> torch.Tensor:
        allowed_values_check(values, _ALLOWED_LABELS, path, "VOC class indices (0…20, 255 void)")
        return values


def read_sbd_mat(path: Path) -> torch.Tensor:
    """The class map of an SBD ``cls/{id}.mat`` file (struct GTcls, field Segmentation): int64 [H, W]."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise RuntimeError(f"{path}: reading SBD .mat labels needs scipy (pip install scipy), or convert "
                           f"them to PNGs under cls_png/") from error
    try:
        contents = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        segmentation = contents["GTcls"].Segmentation
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise DataError(f"{path}: not an SBD class label file (struct GTcls with field Segmentation): "
                        f"{type(error).__name__}: {error}") from error
    if getattr(segmentation, "ndim", 0) != 2:
        raise DataError(f"{path}: GTcls.Segmentation must be a 2-D class map, got shape "
                        f"{getattr(segmentation, 'shape', None)}")
    return torch.from_numpy(segmentation.astype("int64"))


# --- detection -------------------------------------------------------------------------------------

def _text(element: ElementTree.Element, tag: str, path: Path) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{path}: <{element.tag}> has no <{tag}>")
    return child.text.strip()


def _number(element: ElementTree.Element, tag: str, path: Path) -> float:
    text = _text(element, tag, path)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: <{tag}> of <{element.tag}> is not a number: {text!r}") from None


def parse_voc_annotation(path: Union[str, os.PathLike]) -> Dict[str, object]:
    """Reads one VOC annotation XML.

    Returns {"size": (height, width) ints, "boxes": float32 Tensor[M, 4] (x1, y1, x2, y2) in 0-based
    pixel coordinates, "labels": int64 Tensor[M] (1…20), "difficult": bool Tensor[M]}.
    VOC boxes are 1-based and inclusive, so (xmin, ymin, xmax, ymax) becomes (xmin − 1, ymin − 1,
    xmax, ymax): the box then covers exactly the annotated pixels and has width xmax − xmin + 1.
    """
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise DataError(f"{path}: cannot parse the annotation XML ({error})") from error
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: <annotation> has no <size>")
    height, width = int(_number(size, "height", path)), int(_number(size, "width", path))
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        if name not in _CLASS_INDEX or name == "background":
            raise DataError(f"{path}: unknown object class {name!r} (VOC classes: {VOC_CLASSES[1:]})")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: object {name!r} has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise DataError(f"{path}: object {name!r} has an empty box (xmin, ymin, xmax, ymax) = "
                            f"({x1}, {y1}, {x2}, {y2})")
        flag = obj.find("difficult")
        is_difficult = flag is not None and flag.text is not None and flag.text.strip() not in ("", "0")
        boxes.append((x1 - 1.0, y1 - 1.0, x2, y2))
        labels.append(_CLASS_INDEX[name])
        difficult.append(is_difficult)
    return {
        "size": (height, width),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


class VOCDetection(torch.utils.data.Dataset):
    """Pascal VOC object detection: boxes of the 20 classes (labels 1…20; 0 is the background).

    Args:
        root: the VOCdevkit folder, or its parent.
        year: "2007", "2012", or a list of years for their union (["2007", "2012"] with
            image_set "trainval" is the usual VOC07+12 training set).
        image_set: a list in ImageSets/Main ("train", "val", "trainval", "test").
        transforms: optional callable ``(image, target) -> (image, target)``.

    ``ds[i]`` is (image uint8 Tensor[3, H, W] RGB, {"boxes": float32 Tensor[M, 4] xyxy 0-based
    pixels, "labels": int64 Tensor[M], "ignore": bool Tensor[M] (the "difficult" flag)}) after
    ``transforms``.
    Annotations are parsed when an item is read; a malformed file is a ValueError naming it.
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, root: Union[str, os.PathLike], year: Union[str, Sequence[str]] = "2007",
                 image_set: str = "trainval", transforms: Optional[Callable] = None):
        years = [str(year)] if isinstance(year, (str, int)) else [str(y) for y in year]
        if not years:
            raise ArgumentError("year must name at least one VOC year")
        if transforms is not None and not callable(transforms):
            raise ValueError(f"transforms must be callable (image, target) -> (image, target), got "
                             f"{transforms!r}")
        devkit = _devkit(root)
        self.years, self.image_set, self.transforms = years, image_set, transforms
        self.files: List[Tuple[Path, Path]] = []
        for y in years:
            voc = check_folder(devkit / f"VOC{y}", f"VOC year {y!r}")
            ids = _read_ids(voc / "ImageSets" / "Main" / f"{image_set}.txt",
                            f"VOC{y} image_set {image_set!r}")
            for image_id in ids:
                image_path = _existing(voc / "JPEGImages" / f"{image_id}.jpg", f"image of id {image_id}")
                self.files.append((image_path, _existing(voc / "Annotations" / f"{image_id}.xml",
                                                         f"annotation of image {image_path}")))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image_path, annotation_path = self.files[index]
        image = read_image(image_path)
        annotation = parse_voc_annotation(annotation_path)
        # VOC's "difficult" objects count neither as hits nor as misses: they are the ignored boxes
        target = {"boxes": annotation["boxes"], "labels": annotation["labels"],
                  "ignore": annotation["difficult"]}
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"VOCDetection(years={self.years}, image_set={self.image_set!r}, images={len(self)})"

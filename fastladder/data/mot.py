"""2D MOT 2015 (MOTChallenge) pedestrians as a detection dataset, in the official folder layout.

::

    root/train/SEQ/img1/000001.jpg       frames, 1-based, 6 digits
    root/train/SEQ/gt/gt.txt             frame, id, left, top, width, height, consider, x, y, z
    root/train/SEQ/seqinfo.ini           [Sequence] name, imDir, frameRate, seqLength, imWidth,
                                         imHeight, imExt (optional: the original 2015 release has
                                         none; then the frames in img1 are counted and the first
                                         one's size is read)

gt.txt coordinates are 1-based pixels: a row (left, top, width, height) becomes the 0-based box
``(left - 1, top - 1, left - 1 + width, top - 1 + height)`` with exclusive right/bottom edges.
Boxes are not clipped to the image (MOT annotates people partly outside it; the evaluation uses
them as they are). Rows whose consider flag is 0 become ``ignore=True`` boxes, and so do rows of
zero width or height (they can never be matched, so they would only count as misses).

Splits: per sequence the last ``round(val_fraction * seqLength)`` frames (by frame number) are
"val", the others "train"; "all" takes both. Frames without any gt row are skipped. Fact (from
the project's task notes; the real data is not available here, so no test checks it): on the
2DMOT2015 train set (11 sequences, 5500 frames) val_fraction 0.2 gives 4334 train and 1087 val
images.
"""
import configparser
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from fastladder.data._io import read_image
from fastladder.errors import ArgumentError, DataError

__all__ = ["MOT15Detection", "SequenceInfo", "read_sequence_info", "read_mot_ground_truth"]

_GT_COLUMNS = 10


class SequenceInfo:
    """One sequence's seqinfo.ini fields (or the same values derived from its frames)."""
    __slots__ = ("name", "image_dir", "frame_rate", "length", "width", "height", "extension")

    def __init__(self, name: str, image_dir: str, frame_rate: Optional[float], length: int, width: int,
                 height: int, extension: str):
        self.name, self.image_dir, self.frame_rate = name, image_dir, frame_rate
        self.length, self.width, self.height, self.extension = length, width, height, extension

    def __repr__(self):
        return (f"SequenceInfo(name={self.name!r}, image_dir={self.image_dir!r}, "
                f"frame_rate={self.frame_rate}, length={self.length}, width={self.width}, "
                f"height={self.height}, extension={self.extension!r})")


def read_sequence_info(sequence_dir: str) -> SequenceInfo:
    """Reads ``sequence_dir/seqinfo.ini``, or derives the same fields from the img1 folder when absent.

    Raises:
        ValueError naming the file (and the key) when a folder or field is missing or malformed.
    """
    name = os.path.basename(os.path.normpath(sequence_dir))
    ini_path = os.path.join(sequence_dir, "seqinfo.ini")
    if not os.path.isfile(ini_path):
        return _derive_sequence_info(sequence_dir, name)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(ini_path, encoding="utf-8") as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as error:
        raise DataError(f"{ini_path}: not a valid ini file: {error}") from error
    if not parser.has_section("Sequence"):
        raise DataError(f"{ini_path}: no [Sequence] section (sections: {parser.sections()})")
    section = parser["Sequence"]

    def field(key, convert, required=True):
        if key not in section:
            if required:
                raise DataError(f"{ini_path}: [Sequence] lacks the key {key!r} (keys: {sorted(section)})")
            return None
        text = section[key].strip()
        try:
            return convert(text)
        except ValueError as error:
            raise DataError(f"{ini_path}: [Sequence] {key} = {text!r} is not a valid "
                            f"{convert.__name__}") from error

    info = SequenceInfo(name=field("name", str, required=False) or name,
                        image_dir=field("imDir", str, required=False) or "img1",
                        frame_rate=field("frameRate", float, required=False),
                        length=field("seqLength", int), width=field("imWidth", int),
                        height=field("imHeight", int),
                        extension=field("imExt", str, required=False) or ".jpg")
    for key, value in (("seqLength", info.length), ("imWidth", info.width), ("imHeight", info.height)):
        if value <= 0:
            raise DataError(f"{ini_path}: [Sequence] {key} must be positive, got {value}")
    if not info.extension.startswith("."):
        info.extension = "." + info.extension
    image_dir = os.path.join(sequence_dir, info.image_dir)
    if not os.path.isdir(image_dir):
        raise DataError(f"{ini_path}: the image folder imDir={info.image_dir!r} does not exist "
                        f"({image_dir})")
    return info


def _derive_sequence_info(sequence_dir: str, name: str) -> SequenceInfo:
    image_dir = os.path.join(sequence_dir, "img1")
    if not os.path.isdir(image_dir):
        raise DataError(f"{sequence_dir}: neither seqinfo.ini nor an img1 folder found")
    frames = sorted(entry for entry in os.listdir(image_dir) if _frame_number(entry) is not None)
    if not frames:
        raise DataError(f"{image_dir}: no frame images (000001.jpg, ...) found")
    extension = os.path.splitext(frames[0])[1]
    first = os.path.join(image_dir, frames[0])
    try:
        with Image.open(first) as image:
            width, height = image.size
    except OSError as error:
        raise DataError(f"{first}: cannot read the image size: {error}") from error
    return SequenceInfo(name=name, image_dir="img1", frame_rate=None, length=len(frames), width=width,
                        height=height, extension=extension)


def _frame_number(file_name: str) -> Optional[int]:
    stem, extension = os.path.splitext(file_name)
    if len(stem) != 6 or not stem.isdigit() or not extension:
        return None
    return int(stem)


def read_mot_ground_truth(path: str, num_frames: int) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """Parses a MOT15 gt.txt into {frame: (boxes float32 [M, 4] 0-based xyxy, ignore bool [M])}.

    Rows must have 10 comma-separated numbers (frame, id, left, top, width, height, consider, x,
    y, z). Blank lines are skipped.

    Raises:
        ValueError naming the file and the 1-based line number for a wrong column count, a
        non-numeric field, a negative width or height, or a frame outside 1..num_frames.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: ground-truth file not found")
    rows: Dict[int, List[Tuple[float, float, float, float, bool]]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the ground truth ({error})") from error
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = [field.strip() for field in text.split(",")]
        if len(fields) != _GT_COLUMNS:
            raise DataError(f"{path}:{line_number}: expected {_GT_COLUMNS} comma-separated values "
                            f"(frame, id, left, top, width, height, consider, x, y, z), got "
                            f"{len(fields)}: {text!r}")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise DataError(f"{path}:{line_number}: non-numeric value in {text!r}") from None
        if not all(math.isfinite(value) for value in values):
            raise DataError(f"{path}:{line_number}: non-finite value in {text!r}")
        frame, _, left, top, width, height, consider = values[:7]
        if frame != int(frame) or not 1 <= frame <= num_frames:
            raise DataError(f"{path}:{line_number}: frame {fields[0]} is outside 1..{num_frames} "
                            f"(the sequence length)")
        if width < 0 or height < 0:
            raise DataError(f"{path}:{line_number}: negative box size (width {fields[4]}, "
                            f"height {fields[5]})")
        ignore = consider == 0 or width == 0 or height == 0
        rows.setdefault(int(frame), []).append((left - 1, top - 1, width, height, ignore))
    result = {}
    for frame, frame_rows in rows.items():
        table = torch.tensor([row[:4] for row in frame_rows], dtype=torch.float64)
        boxes = torch.cat([table[:, :2], table[:, :2] + table[:, 2:]], 1).to(torch.float32)
        result[frame] = (boxes, torch.tensor([row[4] for row in frame_rows], dtype=torch.bool))
    return result


class MOT15Detection(torch.utils.data.Dataset):
    """Pedestrian detection on 2D MOT 2015 train sequences (see the module docstring for the layout).

    Args:
        root: the 2DMOT2015 folder (holding train/).
        split: "train", "val" or "all" (a per-sequence split of the annotated train frames).
        val_fraction: in [0, 1]; the last round(val_fraction * seqLength) frames of each sequence are val.
        transforms: optional callable ``(image, target) -> (image, target)``.
        sequences: names of the sequences to use (default: every folder in root/train, sorted).

    ``ds[i]`` is ``(image, target)``: image uint8 Tensor[3, H, W] RGB; target {"boxes": float32
    [M, 4] 0-based xyxy pixels (x2, y2 exclusive), "labels": int64 [M] (1 = pedestrian), "ignore":
    bool [M]}, then ``transforms`` if given.

    Attributes:
        num_classes (2), class_names (("background", "pedestrian")), sequences (names used),
        sequence_info ({name: SequenceInfo}), frames (list of (sequence, frame, image path)).
    """
    num_classes = 2
    class_names = ("background", "pedestrian")

    def __init__(self, root: str, split: str = "train", val_fraction: float = 0.2,
                 transforms: Optional[Callable] = None, sequences: Optional[Sequence[str]] = None):
        if split not in ("train", "val", "all"):
            raise ArgumentError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0.0 <= float(val_fraction) <= 1.0:
            raise ArgumentError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
        train_dir = os.path.join(root, "train")
        if not os.path.isdir(train_dir):
            raise DataError(f"{train_dir}: folder not found (expected the 2DMOT2015 layout "
                            f"root/train/SEQ/...)")
        available = sorted(entry for entry in os.listdir(train_dir)
                           if os.path.isdir(os.path.join(train_dir, entry)))
        if sequences is None:
            sequences = available
            if not sequences:
                raise DataError(f"{train_dir}: no sequence folders")
        else:
            sequences = list(sequences)
            missing = [name for name in sequences if name not in available]
            if missing:
                raise ArgumentError(f"sequences {missing} not found in {train_dir} (available: {available})")
        self.root, self.split, self.transforms = root, split, transforms
        self.val_fraction = float(val_fraction)
        self.sequences = tuple(sequences)
        self.sequence_info: Dict[str, SequenceInfo] = {}
        self.frames: List[Tuple[str, int, str]] = []
        self._targets: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for name in self.sequences:
            self._add_sequence(os.path.join(train_dir, name), name)

    def _add_sequence(self, sequence_dir: str, name: str):
        info = read_sequence_info(sequence_dir)
        self.sequence_info[name] = info
        annotations = read_mot_ground_truth(os.path.join(sequence_dir, "gt", "gt.txt"), info.length)
        num_val = int(math.floor(info.length * self.val_fraction + 0.5))
        first_val_frame = info.length - num_val + 1
        image_dir = os.path.join(sequence_dir, info.image_dir)
        present = set(os.listdir(image_dir))
        for frame in sorted(annotations):
            in_val = frame >= first_val_frame
            if (self.split == "train" and in_val) or (self.split == "val" and not in_val):
                continue
            file_name = f"{frame:06d}{info.extension}"
            if file_name not in present:
                raise DataError(f"{os.path.join(image_dir, file_name)}: frame {frame} has ground truth "
                                f"but no image")
            self.frames.append((name, frame, os.path.join(image_dir, file_name)))
            self._targets.append(annotations[frame])

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        _, _, path = self.frames[index]
        image = read_image(path)
        boxes, ignore = self._targets[index]
        target = {"boxes": boxes.clone(), "labels": torch.ones(boxes.shape[0], dtype=torch.int64),
                  "ignore": ignore.clone()}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self):
        return (f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, "
                f"val_fraction={self.val_fraction}, sequences={len(self.sequences)}, images={len(self)})")

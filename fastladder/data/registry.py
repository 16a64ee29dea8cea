"""The dataset registry: every dataset fastladder trains and evaluates on, described in one place.

For each ``(task, name)`` — task ``"seg"``: cityscapes, voc, camvid, synthetic; task ``"det"``:
mot15, voc, synthetic — :func:`dataset_info` gives a :class:`DatasetInfo`: the dataset class, class
names, palette, default input normalization, ignore index and official split names.
:func:`build_dataset` constructs a dataset from its root and split; :func:`dataset_root` says where a
dataset lives (the synthetic sets need no download and default to ``<run folder>/synthetic-data``).

**Normalization scale.** Every mean and standard deviation here (and in checkpoints, see
:class:`fastladder.models.ModelMeta`) is per RGB channel on the 0–255 pixel scale: a network input is
``(pixel − mean) / std`` with pixel the uint8 value as read from the file.

Label maps of segmentation datasets hold train ids ``0 … num_classes − 1`` and :data:`IGNORE_INDEX`
(255) for pixels that are not evaluated. Detection targets hold ``"boxes"`` (float32 [M, 4] xyxy
0-based pixels), ``"labels"`` (int64 [M], 1 … num_classes − 1; 0 is the background) and ``"ignore"``
(bool [M]: boxes that are neither hits nor misses, e.g. VOC's "difficult" objects and MOT rows whose
consider flag is 0).
"""
import dataclasses
import inspect
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from fastladder.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVid
from fastladder.data.cityscapes import Cityscapes
from fastladder.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX
from fastladder.data.mot import MOT15Detection
from fastladder.data.synthetic import SyntheticScenes
from fastladder.data.synthetic_detection import SyntheticPedestrians
from fastladder.data.voc import VOC_CLASSES, VOC_PALETTE, VOCDetection, VOCSegmentation
from fastladder.errors import ArgumentError

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "CITYSCAPES_MEAN", "CITYSCAPES_STD", "TASKS",
           "SYNTHETIC_DATA_FOLDER", "DatasetInfo", "dataset_info", "list_datasets", "build_dataset",
           "dataset_root"]

# RGB mean and standard deviation on the 0–255 scale (see the module docstring).
# ImageNet's: the statistics torchvision's DenseNet and VGG16 ImageNet weights were trained with.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Cityscapes' (its train images), used by the ladder-DenseNet papers' Cityscapes models.
CITYSCAPES_MEAN = (75.2, 85.0, 75.1)
CITYSCAPES_STD = (46.9, 47.6, 46.5)

TASKS = ("seg", "det")
# where a training run keeps a synthetic set it generates when no root is given
SYNTHETIC_DATA_FOLDER = "synthetic-data"

# a pedestrian-detection palette: background black, pedestrian Cityscapes' "person" red
_PEDESTRIAN_CLASSES = ("background", "pedestrian")
_PEDESTRIAN_PALETTE = torch.tensor([(0, 0, 0), (220, 20, 60)], dtype=torch.uint8)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What fastladder knows about one dataset.

    Attributes:
        task: "seg" or "det".
        name: the registry name (``--dataset``).
        dataset_class: the :class:`torch.utils.data.Dataset` subclass that reads it.
        class_names: one name per class index (detection: index 0 is the background).
        palette: uint8 Tensor[num_classes, 3], the RGB colour of each class.
        mean, std: the default input normalization, RGB on the 0–255 scale.
        ignore_index: the label of pixels that are not evaluated (segmentation).
        splits: the official split (image set) names the class accepts.
        train_split, val_split: the splits a training run trains and validates on.
        needs_root: False for the synthetic sets (generated into :func:`dataset_root`'s folder).
        split_argument: the name of the class's split parameter ("split" or "image_set").
    """

    task: str
    name: str
    dataset_class: type
    class_names: Tuple[str, ...]
    palette: torch.Tensor
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    splits: Tuple[str, ...]
    train_split: str = "train"
    val_split: str = "val"
    ignore_index: int = IGNORE_INDEX
    needs_root: bool = True
    split_argument: str = "split"

    @property
    def num_classes(self) -> int:
        """Outputs of a model for this dataset (detection: the background included)."""
        return len(self.class_names)


_REGISTERED = (
    DatasetInfo("seg", "cityscapes", Cityscapes, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_MEAN,
                CITYSCAPES_STD, splits=("train", "val", "test")),
    DatasetInfo("seg", "voc", VOCSegmentation, VOC_CLASSES, VOC_PALETTE, IMAGENET_MEAN, IMAGENET_STD,
                splits=("train", "val", "trainval", "train_aug"), split_argument="image_set"),
    DatasetInfo("seg", "camvid", CamVid, CAMVID_CLASSES, CAMVID_PALETTE, IMAGENET_MEAN, IMAGENET_STD,
                splits=("train", "val", "test")),
    # Cityscapes-like scenes in the Cityscapes layout: Cityscapes' classes and statistics
    DatasetInfo("seg", "synthetic", SyntheticScenes, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_MEAN,
                CITYSCAPES_STD, splits=("train", "val", "test"), needs_root=False),
    # MOT15's splits: the last frames of each train sequence are "val" (see fastladder.data.mot)
    DatasetInfo("det", "mot15", MOT15Detection, _PEDESTRIAN_CLASSES, _PEDESTRIAN_PALETTE, IMAGENET_MEAN,
                IMAGENET_STD, splits=("train", "val", "all")),
    DatasetInfo("det", "voc", VOCDetection, VOC_CLASSES, VOC_PALETTE, IMAGENET_MEAN, IMAGENET_STD,
                splits=("train", "val", "trainval", "test"), split_argument="image_set"),
    DatasetInfo("det", "synthetic", SyntheticPedestrians, _PEDESTRIAN_CLASSES, _PEDESTRIAN_PALETTE,
                IMAGENET_MEAN, IMAGENET_STD, splits=("train", "val", "all"), needs_root=False),
)
_DATASETS: Dict[Tuple[str, str], DatasetInfo] = {(info.task, info.name): info for info in _REGISTERED}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ArgumentError(f"task must be one of {TASKS}, got {task!r}")


def list_datasets(task: str) -> Tuple[str, ...]:
    """The registered dataset names of ``task`` ("seg" or "det"), in registration order."""
    _check_task(task)
    return tuple(name for (kind, name) in _DATASETS if kind == task)


def dataset_info(task: str, name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` for ``task``; ArgumentError naming the choices."""
    _check_task(task)
    info = _DATASETS.get((task, name))
    if info is None:
        raise ArgumentError(f"dataset must be one of {list_datasets(task)} for task {task!r}, got {name!r}")
    return info


def dataset_root(task: str, name: str, root: Optional[Union[str, os.PathLike]],
                 run_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """The folder of dataset ``name``: ``root`` when given; for a synthetic set without one,
    ``<run_dir>/synthetic-data`` (where a training run generates it). Other datasets need ``root``:
    ArgumentError naming ``--root``."""
    info = dataset_info(task, name)
    if root is not None:
        return os.fspath(root)
    if info.needs_root or run_dir is None:
        what = "the folder of its official layout" if info.needs_root else "the folder of the generated set"
        raise ArgumentError(f"dataset {name!r} needs root (--root): {what}")
    return os.path.join(os.fspath(run_dir), SYNTHETIC_DATA_FOLDER)


def build_dataset(task: str, name: str, root: Union[str, os.PathLike], split: str, *,
                  transforms: Optional[Callable] = None, **kwargs: Any) -> torch.utils.data.Dataset:
    """Dataset ``name`` of ``task`` read from ``root`` (its official layout), split ``split``.

    Args:
        task, name: see :func:`list_datasets`.
        root: the dataset's folder (see :func:`dataset_root`).
        split: one of ``dataset_info(task, name).splits``.
        transforms: ``(image, label_or_target) -> (image, label_or_target)``, applied per sample.
        **kwargs: further constructor arguments of the class (e.g. ``year`` for VOC,
            ``num_images`` for the synthetic scenes, ``val_fraction`` for MOT15).

    ``ds[i]`` is (image uint8 Tensor[3, H, W] RGB, label int64 Tensor[H, W] or detection target)
    before ``transforms``.
    """
    info = dataset_info(task, name)
    if split not in info.splits:
        raise ArgumentError(f"split of dataset {name!r} must be one of {info.splits}, got {split!r}")
    parameters = inspect.signature(info.dataset_class.__init__).parameters
    unknown = sorted(set(kwargs) - set(parameters) - {"self"})
    if unknown or info.split_argument in kwargs or "transforms" in kwargs:
        bad = unknown or [key for key in (info.split_argument, "transforms") if key in kwargs]
        accepted = sorted(set(parameters) - {"self", "root", "transforms", info.split_argument})
        raise ArgumentError(f"dataset_kwargs: {info.dataset_class.__name__} does not take {bad} "
                            f"(it takes {accepted})")
    kwargs[info.split_argument] = split
    return info.dataset_class(os.fspath(root), transforms=transforms, **kwargs)

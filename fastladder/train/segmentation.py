"""Semantic segmentation as a training task: ladder loss, mIoU evaluation, the standard datasets.

Datasets: ``cityscapes`` (19 train ids), ``voc`` (VOC 2012, 21 classes), ``camvid`` and
``synthetic`` (built-in scenes, no download), each in its official layout under ``config.root``.
Training samples are random-scale crops of ``config.crop_size`` with horizontal flips; validation
images are whole.
"""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fastladder.data.labels import IGNORE_INDEX
from fastladder.eval.segmentation import confusion_matrix, mean_iou
from fastladder.train.config import TrainConfig
from fastladder.train.distributed import unwrap_model
from fastladder.train.loop import Runtime, Task, move_to_device
from fastladder.train.losses import ladder_loss

__all__ = ["SegmentationTask", "build_segmentation_dataset"]


def build_segmentation_dataset(config: TrainConfig, split: str) -> Dataset:
    """The dataset ``config.dataset`` names (:func:`fastladder.data.list_datasets` ``("seg")``), with
    training or evaluation transforms normalized with the dataset's registered mean and std.

    Args:
        config: reads ``dataset``, ``root`` (default for ``synthetic``: ``<out>/synthetic-data``),
            ``dataset_kwargs`` (extra constructor arguments, e.g. ``{"num_images": 64}`` for
            ``synthetic``), ``crop_size``, ``scale_range``.
        split: ``"train"`` (random-scale crops, flips) or ``"val"`` (whole images).
    """
    from fastladder.data import registry, transforms

    info = registry.dataset_info("seg", config.dataset)
    root = registry.dataset_root("seg", config.dataset, config.root, config.out)
    if split == "train":
        tf = transforms.segmentation_train_transforms(
            tuple(config.crop_size), scale_range=tuple(config.scale_range), mean=info.mean, std=info.std)
    elif split == "val":
        tf = transforms.segmentation_eval_transforms(mean=info.mean, std=info.std)
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    official = info.train_split if split == "train" else info.val_split
    return registry.build_dataset("seg", config.dataset, root, official, transforms=tf,
                                  **config.dataset_kwargs)


class SegmentationTask(Task):
    """Dense classification trained with :func:`ladder_loss` (0.7 main + 0.3 auxiliary CE when the
    model returns auxiliary logits), evaluated by mIoU over the confusion matrix of the whole
    validation set (summed over batches and processes).

    Samples are ``(image Tensor[3, H, W] float, label Tensor[H, W] int64)`` with ``ignore_index``
    on unlabelled pixels; the dataset has ``num_classes`` (and optionally ``class_names``,
    ``ignore_index``). uint8 images are scaled to [0, 1].

    Args:
        dataset_factory: ``factory(config, split) -> dataset``; default :func:`build_segmentation_dataset`.
    """

    name = "seg"
    main_metric = "miou"
    higher_is_better = True
    metric_names = ("miou", "pixel_accuracy")

    def __init__(self, dataset_factory: Optional[Callable[[TrainConfig, str], Dataset]] = None):
        self.dataset_factory = dataset_factory or build_segmentation_dataset
        # the registry's datasets and normalization, or the caller's own data
        self.custom_data = dataset_factory is not None
        self.ignore_index = IGNORE_INDEX
        self.num_classes = None
        self.class_names = None

    def build_datasets(self, config: TrainConfig) -> Tuple[Dataset, Optional[Dataset]]:
        train_set = self.dataset_factory(config, "train")
        val_set = self.dataset_factory(config, "val")
        for split, dataset in (("train", train_set), ("val", val_set)):
            if dataset is not None and not isinstance(getattr(dataset, "num_classes", None), int):
                raise ValueError(f"the {split} dataset ({type(dataset).__name__}) must have an int attribute "
                                 f"num_classes")
        self.num_classes = train_set.num_classes
        if val_set is not None and val_set.num_classes != self.num_classes:
            raise ValueError(f"the train and val datasets disagree on num_classes: {self.num_classes} and "
                             f"{val_set.num_classes}")
        self.ignore_index = getattr(train_set, "ignore_index", IGNORE_INDEX)
        self.class_names = list(getattr(train_set, "class_names", None) or
                                [str(c) for c in range(self.num_classes)])
        return train_set, val_set

    def model_spec(self, config: TrainConfig, train_dataset: Dataset) -> Dict[str, Any]:
        kwargs = dict(config.model_kwargs)
        if config.memory_efficient:
            kwargs["memory_efficient"] = True
        return {"model_name": config.model, "model_kwargs": kwargs,
                "num_classes": int(train_dataset.num_classes)}

    def to_device(self, batch: Any, device: torch.device, channels_last: bool = False) -> Any:
        # uint8 images travel as uint8 (a quarter of the bytes) and become float on the device.
        images, labels = move_to_device(tuple(batch), device)
        if not images.is_floating_point():
            images = images.float().div_(255)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def training_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, labels = batch
        return ladder_loss(model(images), labels, ignore_index=self.ignore_index), {}

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> Dict[str, Any]:
        """``{"miou", "pixel_accuracy", "loss" (mean CE per labelled pixel), "iou" (per class, NaN
        where undefined), "class_names", "pixels" (labelled pixels evaluated)}``."""
        from fastladder.models import optimize_for_inference

        classes = self.num_classes
        device = runtime.device
        # the fused inference form (BatchNorms folded), as `fastladder eval seg` and predict run it: the
        # same logits, so evaluating a checkpoint later reproduces this score exactly
        model = optimize_for_inference(unwrap_model(model))
        confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)
        # [summed cross-entropy, labelled pixels]
        loss_sums = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in runtime.progress(loader, desc="val"):
            images, labels = runtime.to_device(batch)
            with runtime.autocast():
                logits = model(images)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            logits = logits.float()
            loss_sums[0] += F.cross_entropy(logits, labels, ignore_index=self.ignore_index,
                                            reduction="sum").double()
            loss_sums[1] += (labels != self.ignore_index).sum()
            confusion += confusion_matrix(logits.argmax(1), labels, classes, self.ignore_index)
        runtime.reduce_sum(confusion)
        runtime.reduce_sum(loss_sums)
        scores = mean_iou(confusion.cpu())
        return {
            "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "loss": (loss_sums[0] / loss_sums[1]).item() if loss_sums[1] > 0 else float("nan"),
            "iou": scores["iou"].tolist(),
            "class_names": self.class_names,
            "pixels": int(confusion.sum()),
        }

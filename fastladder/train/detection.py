"""Object detection as a training task: SSD with the MultiBox loss, evaluated by Average Precision.

Datasets: ``mot15`` (2D MOT 2015 pedestrians, :class:`fastladder.data.mot.MOT15Detection`), ``voc``
(Pascal VOC detection, ``VOCDetection`` of :mod:`fastladder.data`) and ``synthetic``
(:class:`fastladder.data.synthetic_detection.SyntheticPedestrians`, generated under
``<out>/synthetic-data`` unless ``config.root`` says otherwise). Training samples get the SSD
augmentation (photometric distortion, zoom out up to ``config.zoom_out``, min-IoU random crop,
horizontal flip), every sample is resized to ``config.image_size`` and normalised with the
ImageNet statistics (what the VGG16 weights expect).

Ignored ground truth (MOT's consider flag 0, VOC's "difficult") is neither a positive nor a
negative in training: the MultiBox loss sees only the other boxes, and the priors that such a box
would have matched (IoU above ``config.match_iou``) and that no other box claims are taken out of
the hard-negative pool, so the model is not taught that a half-occluded person is background.
In evaluation ignored boxes are the AP's ignore regions (neither hits nor misses).

Use it through :func:`fastladder.train.loop.train` with ``task="det"``; :func:`detection_config`
gives a configuration with SSD's optimization defaults::

    from fastladder.train.detection import detection_config
    from fastladder.train.loop import train
    summary = train(detection_config(dataset="synthetic", out="runs/ssd", steps=2000,
                                     model_kwargs={"width": 0.25}))
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from fastladder.train.config import TrainConfig
from fastladder.train.loop import Runtime, Task, move_to_device

__all__ = ["DetectionTask", "build_detection_dataset", "detection_config", "detection_transforms",
           "collate_padded"]

# The models' own input sizes (their prior layouts are made for them).
_NOMINAL_SIZES = {"ssd300_vgg16": 300, "ssd512_vgg16": 512}


def detection_config(*, source: str = "detection_config()", **values) -> TrainConfig:
    """A TrainConfig of the detection task: SSD's optimization defaults
    (:data:`fastladder.train.config.TASK_DEFAULTS` ``["det"]``: SGD, lr 1e-3 with warmup, step decay
    at 2/3 and 5/6 of a run given in steps, mixed precision on CUDA) updated by ``values``.
    ``source`` names the values in error messages (a file, "command line")."""
    return TrainConfig.from_dict({**values, "task": "det"}, source=source)


def input_size(config: TrainConfig) -> Tuple[int, int]:
    """(H, W) of the network input: ``config.image_size``, else the model's ``image_size`` keyword,
    else the model's nominal size (300 for ssd300_vgg16, 512 for ssd512_vgg16)."""
    if config.image_size is not None:
        return int(config.image_size[0]), int(config.image_size[1])
    size = config.model_kwargs.get("image_size", _NOMINAL_SIZES.get(config.model))
    if size is None:
        raise ValueError(f"model {config.model!r} has no known input size: set image_size")
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def detection_transforms(config: TrainConfig, split: str) -> Callable:
    """The SSD pipeline of ``split``: "train" augments (photometric distortion, zoom out up to
    ``config.zoom_out`` on a canvas of the mean colour, min-IoU crop, flip), both resize to
    :func:`input_size` and normalise with the dataset's registered mean and std (0-255 scale; ImageNet's
    for every detection set, what the VGG16 weights expect). Returns an ``(image, target) -> (image,
    target)``."""
    from fastladder.data import box_transforms as T
    from fastladder.data.registry import dataset_info

    info = dataset_info("det", config.dataset)
    size = input_size(config)
    if split == "val":
        return T.ssd_eval_transforms(size, mean=info.mean, std=info.std)
    if split != "train":
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    steps = [T.PhotometricDistort()]
    if config.zoom_out > 1:
        steps.append(T.Expand(info.mean, max_ratio=float(config.zoom_out)))
    steps += [T.MinIoURandomCrop(), T.RandomHorizontalFlip(), T.Resize(size),
              T.ToFloatNormalize(info.mean, info.std)]
    return T.Compose(steps)


def build_detection_dataset(config: TrainConfig, split: str) -> Dataset:
    """The dataset ``config.dataset`` names (:func:`fastladder.data.list_datasets` ``("det")``), with
    the SSD transforms of ``split``.

    Args:
        config: reads ``dataset``, ``root`` (default for ``synthetic``: ``<out>/synthetic-data``),
            ``dataset_kwargs`` (extra constructor arguments, e.g. ``{"num_sequences": 4}`` for
            ``synthetic``, ``{"val_fraction": 0.2}`` for ``mot15``, ``{"year": "2007",
            "train_image_set": "trainval", "val_image_set": "test"}`` for ``voc``), ``image_size``,
            ``zoom_out``.
        split: "train" or "val".
    """
    from fastladder.data import registry

    info = registry.dataset_info("det", config.dataset)
    root = registry.dataset_root("det", config.dataset, config.root, config.out)
    transforms = detection_transforms(config, split)
    kwargs = dict(config.dataset_kwargs)
    official = {"train": kwargs.pop("train_image_set", info.train_split),
                "val": kwargs.pop("val_image_set", info.val_split)}[split]
    if config.dataset == "synthetic":
        kwargs.setdefault("progress", config.progress)
    return registry.build_dataset("det", config.dataset, root, official, transforms=transforms, **kwargs)


def collate_padded(samples: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``[(image [3, H, W], target)]`` → ``(images [B, 3, H, W], {"boxes" [B, M, 4] pixels xyxy,
    "labels" [B, M] int64 (-1: padding), "ignore" [B, M] bool})`` with M the most boxes of an image.

    Padded tensors (rather than lists) move to the device in one call each and are what the loss
    takes. Raises ValueError when the images differ in size."""
    from fastladder.data.box_transforms import collate_detection

    images, targets = collate_detection(samples)
    most = max(int(target["boxes"].shape[0]) for target in targets)
    batch = len(targets)
    boxes = torch.zeros(batch, most, 4, dtype=torch.float32)
    labels = torch.full((batch, most), -1, dtype=torch.int64)
    ignore = torch.zeros(batch, most, dtype=torch.bool)
    for index, target in enumerate(targets):
        count = int(target["boxes"].shape[0])
        if target.get("labels") is None or target["labels"].shape[0] != count:
            raise ValueError(f"sample {index}: target['labels'] must have one entry per box ({count}), got "
                             f"{None if target.get('labels') is None else tuple(target['labels'].shape)}")
        boxes[index, :count] = target["boxes"].to(torch.float32)
        labels[index, :count] = target["labels"].to(torch.int64)
        if target.get("ignore") is not None:
            ignore[index, :count] = target["ignore"].to(torch.bool)
    return images, {"boxes": boxes, "labels": labels, "ignore": ignore}


def _relative(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[..., 4] pixel xyxy → image-relative, clipped to [0, 1] (as the priors and the decoded boxes)."""
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return (boxes / scale).clamp(0, 1)


class DetectionTask(Task):
    """SSD detection trained with :class:`fastladder.train.multibox.MultiBoxLoss`, evaluated by AP.

    Samples are ``(image Tensor[3, H, W] float normalised, {"boxes" [M, 4] pixel xyxy, "labels" [M]
    (1 … C−1), "ignore" [M] bool})`` (see :func:`build_detection_dataset`); the dataset has
    ``num_classes`` (C, background included) and optionally ``class_names``. The model is an SSD
    (train mode: ``(loc [B, P, 4], conf_logits [B, P, C])``, eval mode: padded detections,
    image-relative xyxy) with ``priors_for((H, W))``.

    Metrics: ``ap`` (``config.ap_method`` at ``config.ap_iou``; the mean over the classes that have
    ground truth when C > 2), ``ap_per_class`` (C − 1 values), ``ap_methods`` (all four AP
    definitions, same IoU), ``loss`` (the val MultiBox loss), ``images`` and ``detections``.

    Args:
        dataset_factory: ``factory(config, split) -> dataset``; default :func:`build_detection_dataset`.
    """

    name = "det"
    main_metric = "ap"
    higher_is_better = True
    metric_names = ("ap",)

    def __init__(self, dataset_factory: Optional[Callable[[TrainConfig, str], Dataset]] = None):
        self.dataset_factory = dataset_factory or build_detection_dataset
        # the registry's datasets and normalization, or the caller's own data
        self.custom_data = dataset_factory is not None
        self.num_classes: Optional[int] = None
        self.class_names: Optional[List[str]] = None
        self.criterion = None
        self.ap_method, self.ap_iou, self.match_iou = "voc", 0.5, 0.5

    def build_datasets(self, config: TrainConfig) -> Tuple[Dataset, Optional[Dataset]]:
        from fastladder.train.multibox import MultiBoxLoss

        train_set = self.dataset_factory(config, "train")
        val_set = self.dataset_factory(config, "val")
        for split, dataset in (("train", train_set), ("val", val_set)):
            if dataset is not None and not isinstance(getattr(dataset, "num_classes", None), int):
                raise ValueError(f"the {split} dataset ({type(dataset).__name__}) must have an int attribute "
                                 f"num_classes (background included)")
        self.num_classes = int(train_set.num_classes)
        if val_set is not None and val_set.num_classes != self.num_classes:
            raise ValueError(f"the train and val datasets disagree on num_classes: {self.num_classes} and "
                             f"{val_set.num_classes}")
        if len(train_set) == 0:
            raise ValueError(f"the training set ({train_set!r}) holds no images")
        self.class_names = list(getattr(train_set, "class_names", None) or
                                [str(c) for c in range(self.num_classes)])
        self.criterion = MultiBoxLoss(self.num_classes, neg_pos_ratio=config.neg_pos_ratio,
                                      iou_threshold=config.match_iou)
        self.ap_method, self.ap_iou = config.ap_method, float(config.ap_iou)
        self.match_iou = float(config.match_iou)
        return train_set, val_set

    def model_spec(self, config: TrainConfig, train_dataset: Dataset) -> Dict[str, Any]:
        kwargs = dict(config.model_kwargs)
        if config.image_size is not None:
            configured = kwargs.get("image_size")
            size = list(input_size(config))
            if configured is not None and list(input_size(config.replace(image_size=None))) != size:
                raise ValueError(f"image_size {size} and model_kwargs['image_size'] {configured!r} disagree")
            kwargs["image_size"] = size
        return {"model_name": config.model, "model_kwargs": kwargs,
                "num_classes": int(train_dataset.num_classes)}

    def collate(self, samples):
        return collate_padded(samples)

    def to_device(self, batch: Any, device: torch.device, channels_last: bool = False) -> Any:
        images, targets = batch
        images = move_to_device(images, device, channels_last)
        return images, move_to_device(targets, device)

    # --- loss -----------------------------------------------------------------------------------

    def _neutral_priors(self, priors: torch.Tensor, boxes: torch.Tensor, kept_labels: torch.Tensor,
                        ignored: torch.Tensor) -> torch.Tensor:
        """BoolTensor[B, P]: the priors that an ignored box would match (IoU > match_iou) and that
        no kept box matches. boxes [B, M, 4] image-relative; kept_labels [B, M] (-1: not kept);
        ignored [B, M] bool."""
        from fastladder.ops.boxes import box_iou
        from fastladder.train.multibox import match_priors, priors_to_xyxy

        batch, most = ignored.shape
        iou = box_iou(boxes.reshape(-1, 4), priors_to_xyxy(priors)).view(batch, most, -1)
        covered = (iou.masked_fill(~ignored[..., None], 0.0) > self.match_iou).any(dim=1)
        _, matched_labels = match_priors(boxes, kept_labels, priors, self.match_iou)
        return covered & (matched_labels == 0)

    def loss(self, loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor,
             targets: Dict[str, torch.Tensor], height: int, width: int):
        """The MultiBox loss of raw head outputs against padded pixel targets (see the module
        docstring for ignored boxes).

        Args:
            loc [B, P, 4], conf_logits [B, P, C]: the SSD head's outputs.
            priors [P, 4]: (cx, cy, w, h) image-relative, for inputs of height × width pixels.
            targets: {"boxes" [B, M, 4] pixel xyxy, "labels" [B, M] (-1: padding), "ignore" [B, M]}.

        Returns:
            (loss, {"loc", "conf"}) as :class:`fastladder.train.multibox.MultiBoxLoss`.
        """
        boxes = _relative(targets["boxes"], height, width).to(priors.dtype)
        present = targets["labels"] >= 0
        # A box clipped to a line (or lying outside the image) can match nothing: padding to the loss.
        usable = present & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        ignored = usable & targets["ignore"]
        labels = torch.where(usable & ~ignored, targets["labels"], torch.full_like(targets["labels"], -1))
        boxes = torch.where(usable[..., None], boxes, torch.zeros_like(boxes))
        if bool(ignored.any()):
            neutral = self._neutral_priors(priors, boxes, labels, ignored)
            # A constant, confidently-background row: cross-entropy ~1e-13 and no gradient, so the
            # hard-negative mining ranks these priors last and they teach nothing.
            certain = torch.zeros(self.num_classes, dtype=conf_logits.dtype, device=conf_logits.device)
            certain[0] = 30.0
            conf_logits = torch.where(neutral[..., None], certain, conf_logits)
        return self.criterion(loc, conf_logits, priors, boxes, labels)

    def training_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, targets = batch
        height, width = images.shape[-2:]
        loc, conf_logits = model(images)
        bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        priors = bare.priors_for((height, width))
        loss, parts = self.loss(loc, conf_logits, priors, targets, height, width)
        # detached tensors: read (one sync) only when the progress bar shows them
        return loss, {"loc": parts["loc"], "conf": parts["conf"]}

    # --- evaluation -----------------------------------------------------------------------------

    @staticmethod
    def _detect(model: nn.Module, images: torch.Tensor):
        """(loc, conf_logits, detections) of an SSD in eval mode: the raw outputs for the val loss
        and the eval forward's post-processing of them (the fused ssd_postprocess)."""
        from fastladder.ops.boxes import ssd_postprocess

        model.check_input(images)
        loc, conf_logits = model.head(model.forward_features(images))
        size = tuple(images.shape[-2:])
        post = model.postprocess
        if size == tuple(model.image_size):
            return loc, conf_logits, post(loc, conf_logits)
        priors = model.priors_for(size)
        detections = ssd_postprocess(loc.to(priors.dtype), conf_logits.to(priors.dtype), priors,
                                     score_thresh=post.score_thresh, nms_thresh=post.nms_thresh,
                                     topk=post.topk, max_detections=post.max_detections,
                                     variances=post.variances, background=post.background)
        return loc, conf_logits, detections

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> Dict[str, Any]:
        """AP over the validation set (detections and ground truth gathered from all processes)."""
        from fastladder.eval.detection import AP_METHODS, average_precision, mean_ap

        device = runtime.device
        detections, ground_truth = [], []
        loss_sums = torch.zeros(2, dtype=torch.float64, device=device)   # [summed loss, batches]
        for batch in runtime.progress(loader, desc="val"):
            images, targets = runtime.to_device(batch)
            height, width = images.shape[-2:]
            with runtime.autocast():
                loc, conf_logits, found = self._detect(model, images)
            loss, _ = self.loss(loc.float(), conf_logits.float(), model.priors_for((height, width)), targets,
                                height, width)
            loss_sums += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64,
                                                                         device=device)])
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
            for index, (boxes, scores, labels) in enumerate(found.to_list()):
                detections.append({"boxes": (boxes.float() * scale).cpu(), "scores": scores.float().cpu(),
                                   "labels": labels.cpu()})
                keep = targets["labels"][index] >= 0
                ground_truth.append({"boxes": targets["boxes"][index][keep].cpu(),
                                     "labels": targets["labels"][index][keep].cpu(),
                                     "ignore": targets["ignore"][index][keep].cpu()})
        runtime.reduce_sum(loss_sums)
        if runtime.context.world_size > 1:
            detections, ground_truth = _gather(detections), _gather(ground_truth)
        per_method = {}
        for method in AP_METHODS:
            per_method[method] = _class_aps(average_precision(detections, ground_truth, self.ap_iou, method),
                                            self.num_classes)
        per_class = per_method[self.ap_method]
        return {
            "ap": mean_ap(per_class),
            "ap_per_class": per_class,
            "ap_methods": {method: mean_ap(values) for method, values in per_method.items()},
            "ap_iou": self.ap_iou,
            "ap_method": self.ap_method,
            "class_names": self.class_names[1:],
            "loss": (loss_sums[0] / loss_sums[1]).item() if loss_sums[1] > 0 else float("nan"),
            "images": len(ground_truth),
            "detections": sum(int(d["boxes"].shape[0]) for d in detections),
        }


def _class_aps(result: Dict[int, float], num_classes: int) -> List[float]:
    """{label: AP} → [AP of class 1, …, class C−1] (NaN for a class absent from both sides)."""
    return [float(result.get(label, float("nan"))) for label in range(1, num_classes)]


def _gather(items: List[Any]) -> List[Any]:
    """The concatenation of every process's list (rank order)."""
    import torch.distributed as dist

    gathered: List[Optional[List[Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]

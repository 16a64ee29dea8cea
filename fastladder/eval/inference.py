"""Dense prediction at test time: multi-scale and flip averaging, and evaluation over a dataset.

Multi-scale inference (as in the LDN evaluation): the normalized image is resized to each scale
with bilinear interpolation, the model runs on it, its logits are resized back to the input size,
turned into softmax probabilities, and the probabilities of all scales (and of the horizontally
flipped inputs, when ``flip``) are averaged. The class of a pixel is the argmax of that average.
"""
import math
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.data

from fastladder.data.transforms import normalize_image  # re-exported: the commands' inputs
from fastladder.eval.segmentation import confusion_matrix, mean_iou

__all__ = ["predict_logits", "predict", "evaluate_segmentation", "format_iou_table", "normalize_image",
           "scaled_size"]


def scaled_size(size: Sequence[int], scale: float) -> Tuple[int, int]:
    """The input size (H, W) at ``scale``: each side times scale, rounded half up, at least 1 pixel."""
    return tuple(max(1, int(math.floor(side * scale + 0.5))) for side in size)


def _logits_of(output: Any) -> torch.Tensor:
    """The dense logits in what a model returned: a tensor, (logits, aux) or a dict with "out"."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    raise TypeError(f"the model must return logits [N, C, H, W] (or a tuple/dict holding them first / under "
                    f"'out'), got {type(output).__name__}")


def _check_scales(scales: Sequence[float]) -> Tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in scales)
    except TypeError:
        raise ValueError(f"scales must be a sequence of positive numbers, got {scales!r}") from None
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
    return scales


def predict_logits(model: nn.Module, images: torch.Tensor, *, scales: Sequence[float] = (1.0,),
                   flip: bool = False, num_classes: Optional[int] = None) -> torch.Tensor:
    """Class probabilities averaged over scales and horizontal flips.

    For every scale s the images are resized to :func:`scaled_size` (H, W, s) with bilinear
    interpolation (align_corners=False; no resize at s = 1), the model runs in eval mode under
    ``torch.inference_mode``, its logits are resized bilinearly back to H×W and soft-maxed over
    classes. With ``flip`` the same is done for the horizontally flipped images, whose probabilities
    are flipped back. The result is the mean over the len(scales)·(2 if flip else 1) runs.

    Args:
        model: returns logits [N, C, h, w] for an input [N, 3, h, w] (h, w: the scaled size; any
            output resolution is resized to H×W). Put in eval mode for the call; its previous mode is
            restored afterwards.
        images (Tensor[N, 3, H, W] float): normalized images on the model's device.
        scales: input scales, e.g. (0.5, 0.75, 1, 1.5, 2).
        flip: also average over the horizontally flipped inputs.
        num_classes: when given, the number of classes the model must produce (checked).

    Returns:
        Tensor[N, C, H, W] float32: probabilities (they sum to 1 over C); an inference-mode tensor
        (read it, or ``clone()`` it before changing it in place outside inference mode).
    """
    return _average(model, images, scales, flip, num_classes, softmax=True)


def _average(model, images, scales, flip, num_classes, softmax: bool) -> torch.Tensor:
    """The mean over the runs of :func:`predict_logits`: softmax probabilities, or the logits
    themselves when ``softmax`` is False."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float batch [N, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be normalized floating-point images, got dtype {images.dtype} "
                         f"(normalize uint8 images with normalize_image first)")
    scales = _check_scales(scales)
    size = tuple(images.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            total = None
            for scale in scales:
                scaled = images
                if scaled_size(size, scale) != size:
                    scaled = F.interpolate(images, size=scaled_size(size, scale), mode="bilinear",
                                           align_corners=False)
                for flipped in ((False, True) if flip else (False,)):
                    logits = _logits_of(model(scaled.flip(-1) if flipped else scaled))
                    if logits.dim() != 4 or logits.shape[0] != images.shape[0]:
                        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for an "
                                         f"input of shape {tuple(scaled.shape)}; expected "
                                         f"[N={images.shape[0]}, C, h, w]")
                    if num_classes is not None and logits.shape[1] != num_classes:
                        raise ValueError(f"num_classes={num_classes} but the model returned "
                                         f"{logits.shape[1]} channels (logits of shape "
                                         f"{tuple(logits.shape)})")
                    logits = logits.float()
                    if tuple(logits.shape[-2:]) != size:
                        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                    probabilities = logits.softmax(1) if softmax else logits
                    if flipped:
                        probabilities = probabilities.flip(-1)
                    total = probabilities if total is None else total.add_(probabilities)
            return total.div_(len(scales) * (2 if flip else 1))
    finally:
        model.train(was_training)


def predict(model: nn.Module, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
            num_classes: Optional[int] = None) -> torch.Tensor:
    """Class ids: the argmax of :func:`predict_logits` (same arguments). Returns Tensor[N, H, W] int64.

    With one run (one scale, no flip) it is the argmax of the logits themselves, as training's
    validation takes it: float32 softmax can round two different logits to one probability, and
    the tie would then go to the lower class.
    """
    scales = _check_scales(scales)
    one_run = len(scales) == 1 and not flip
    return _average(model, images, scales, flip, num_classes, softmax=not one_run).argmax(1)


def _as_batches(data: Union[Iterable, Any]) -> Tuple[Iterable, Optional[int]]:
    """(iterable of (images [N, 3, H, W], labels [N, H, W]) batches, their number or None)."""
    if isinstance(data, torch.utils.data.DataLoader):
        try:
            total = len(data)
        except TypeError:
            total = None
        return data, total
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        def one_by_one():
            # batch 1: the images of a dataset may differ in size
            for index in range(len(data)):
                image, label = data[index]
                yield image.unsqueeze(0), torch.as_tensor(label).unsqueeze(0)
        return one_by_one(), len(data)
    raise TypeError(f"data must be a dataset (len and [i] -> (image [3, H, W], label [H, W])) or a "
                    f"DataLoader of (images [N, 3, H, W], labels [N, H, W]) batches, got "
                    f"{type(data).__name__}")


def evaluate_segmentation(model: nn.Module, data, num_classes: int, *, scales: Sequence[float] = (1.0,),
                          flip: bool = False, device: Union[str, torch.device, None] = None,
                          progress: bool = True, ignore_index: int = 255) -> Dict[str, Any]:
    """Confusion matrix, per-class IoU, mIoU and pixel accuracy of a model over a dataset.

    Args:
        model: a segmentation model (see :func:`predict_logits`); moved to ``device``.
        data: a dataset whose items are (image [3, H, W] normalized float, label [H, W] int train ids,
            ``ignore_index`` for void), run one image at a time so sizes may differ; or a DataLoader
            yielding batches (images [N, 3, H, W], labels [N, H, W]).
        num_classes: C.
        scales, flip: test-time augmentation (see :func:`predict_logits`).
        device: where the model runs (default: the device of the model's parameters).
        progress: show a tqdm bar with the running mIoU.
        ignore_index: the label value of pixels that do not count.

    Returns:
        {"miou": float, "iou": Tensor[C] float64 (NaN for classes absent from ground truth and
        prediction), "pixel_accuracy": float, "confusion": Tensor[C, C] int64 (rows ground truth,
        columns prediction)}; as the official Cityscapes pixel-level evaluation defines them.
    """
    from tqdm import tqdm

    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    scales = _check_scales(scales)
    if device is None:
        parameter = next(iter(model.parameters()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    batches, total = _as_batches(data)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    one_image_batches = getattr(data, "batch_size", 1) == 1
    with tqdm(batches, total=total, desc="eval", unit="img" if one_image_batches else "batch",
              disable=not progress) as bar:
        for step, (images, labels) in enumerate(bar):
            if not isinstance(images, torch.Tensor) or images.dim() != 4:
                seen = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise ValueError(f"item {step}: images must be [N, 3, H, W], got {seen}")
            if not images.is_floating_point():
                raise ValueError(f"item {step}: images have dtype {images.dtype}; evaluation expects "
                                 f"normalized float images (apply the dataset's eval transforms or "
                                 f"normalize_image)")
            labels = torch.as_tensor(labels)
            if labels.shape != images.shape[:1] + images.shape[2:]:
                raise ValueError(f"item {step}: labels of shape {tuple(labels.shape)} do not match images of "
                                 f"shape {tuple(images.shape)} (expected [N, H, W])")
            predictions = predict(model, images.to(device, non_blocking=True), scales=scales, flip=flip,
                                  num_classes=num_classes)
            confusion += confusion_matrix(predictions, labels.to(device, non_blocking=True), num_classes,
                                          ignore_index=ignore_index)
            if progress:
                bar.set_postfix(miou=f"{100 * mean_iou(confusion)['miou']:.2f}", refresh=False)
    confusion = confusion.cpu()
    result = mean_iou(confusion)
    result["confusion"] = confusion
    return result


def format_iou_table(result: Dict[str, Any], class_names: Sequence[str]) -> str:
    """The per-class IoU table of an :func:`evaluate_segmentation` result, in percent.

    Classes absent from both ground truth and predictions (no IoU, left out of the mean) read "n/a".
    """
    iou = result["iou"]
    if len(class_names) != len(iou):
        raise ValueError(f"class_names has {len(class_names)} names for {len(iou)} classes")
    width = max([len("pixel accuracy")] + [len(name) for name in class_names])
    lines = [f"{'class':<{width}}  {'IoU':>6}", "-" * (width + 8)]
    for name, value in zip(class_names, iou.tolist()):
        lines.append(f"{name:<{width}}  {'n/a' if math.isnan(value) else f'{100 * value:6.2f}':>6}")
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {100 * result['miou']:6.2f}")
    lines.append(f"{'pixel accuracy':<{width}}  {100 * result['pixel_accuracy']:6.2f}")
    return "\n".join(lines)

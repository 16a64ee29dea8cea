"""Joint transforms of an (image, label) pair for semantic segmentation.

Every transform is a callable ``(image, label) -> (image, label)``: image Tensor[C, H, W] (uint8 on
the 0–255 scale until ``ToFloat`` / ``Normalize`` make it float32), label int64 Tensor[H, W] or
None (prediction without ground truth). Geometric transforms move image and label together, so a
label pixel keeps describing the image pixel it sat on; images of any size work.

Randomness comes from torch's global RNG, or from the ``generator`` (torch.Generator) given to a
transform, whose state a training loop can save and restore to resume exactly. A DataLoader with
several workers copies the transforms into every worker; give each worker its own generator
state (``worker_init_fn``) or rely on the global RNG, which PyTorch seeds per worker.
"""
import numbers
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# RGB means and standard deviations on the 0–255 scale, defined with the datasets they belong to
from fastladder.data.registry import (CITYSCAPES_MEAN, CITYSCAPES_STD, IGNORE_INDEX, IMAGENET_MEAN,
                                      IMAGENET_STD)

__all__ = ["CITYSCAPES_MEAN", "CITYSCAPES_STD", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_image", "Compose",
           "RandomScale", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Resize", "ToFloat",
           "Normalize", "segmentation_train_transforms", "segmentation_eval_transforms"]

_INTERPOLATIONS = ("bilinear", "bicubic")
Pair = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _check_pair(image: torch.Tensor, label: Optional[torch.Tensor], name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: image must be a Tensor[C, H, W], got {shape}")
    if label is not None and (not isinstance(label, torch.Tensor) or label.shape != image.shape[1:]):
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"{name}: label must be a Tensor[H, W] of the image's size "
                         f"{tuple(image.shape[1:])}, "
                         f"got {shape}")


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """An integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _size_pair(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    if len(size) != 2 or any(not isinstance(s, numbers.Integral) or s <= 0 for s in size):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _resample(image: torch.Tensor, label: Optional[torch.Tensor], size: Tuple[int, int],
              interpolation: str) -> Pair:
    """Resizes the image (``interpolation``, antialiased when shrinking, values kept inside the input's
    range so bicubic overshoot never leaves it) and the label (nearest, pixel-centre aligned)."""
    if tuple(image.shape[1:]) != size:
        values = (image if image.is_floating_point() else image.float())[None]
        resized = F.interpolate(values, size=size, mode=interpolation, align_corners=False, antialias=True)[0]
        if image.numel():
            resized = resized.clamp(image.min().float(), image.max().float())
        image = resized.round().to(image.dtype) if not image.is_floating_point() else resized.to(image.dtype)
    if label is not None and tuple(label.shape) != size:
        # "nearest-exact" samples the source pixel under the output pixel's centre, as the bilinear
        # image path does (align_corners=False); plain "nearest" is shifted by half a pixel
        resized = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        label = resized.to(label.dtype)
    return image, label


class Compose:
    """Applies the transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        for t in transforms:
            if not callable(t):
                raise ValueError(f"transforms must be callables (image, label) -> (image, label), got {t!r}")
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class RandomScale:
    """Rescales by a factor drawn uniformly from [min_scale, max_scale]; the output is
    round(H · s) × round(W · s) (at least 1×1).

    image: ``interpolation`` ("bilinear" or "bicubic", antialiased when shrinking, rounded back to
    uint8 for uint8 input); label: nearest neighbour.
    """

    def __init__(self, min_scale: float, max_scale: float, interpolation: str = "bilinear",
                 generator: Optional[torch.Generator] = None):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, "
                             f"max_scale={max_scale}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.interpolation = interpolation
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "RandomScale")
        scale = _uniform(self.min_scale, self.max_scale, self.generator)
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale)))
        return _resample(image, label, size, self.interpolation)

    def __repr__(self) -> str:
        return f"RandomScale(min_scale={self.min_scale}, max_scale={self.max_scale}, {self.interpolation!r})"


class RandomCrop:
    """Cuts a random size[0] × size[1] window; along a side shorter than the window, the image is
    placed at a random offset inside it and the rest is padded (image: ``image_fill``, a number or
    one per channel on the image's own scale; label: ``ignore_index``)."""

    def __init__(self, size: Union[int, Sequence[int]], ignore_index: int = IGNORE_INDEX,
                 image_fill: Union[float, Sequence[float]] = 0.0,
                 generator: Optional[torch.Generator] = None):
        self.size = _size_pair(size, "RandomCrop size")
        self.ignore_index = ignore_index
        self.image_fill = image_fill
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "RandomCrop")
        channels, height, width = image.shape
        crop_height, crop_width = self.size
        # window origin in image coordinates; negative = the image sits inside the window
        top = _randint(min(0, height - crop_height), max(0, height - crop_height), self.generator)
        left = _randint(min(0, width - crop_width), max(0, width - crop_width), self.generator)
        fill = torch.as_tensor(self.image_fill, dtype=torch.float64).flatten()
        if fill.numel() not in (1, channels):
            raise ValueError(f"RandomCrop image_fill must be one value or one per channel ({channels}), got "
                             f"{self.image_fill!r}")
        out_image = fill.to(image.dtype if image.is_floating_point() else torch.float64).view(-1, 1, 1)
        if not image.is_floating_point():
            info = torch.iinfo(image.dtype)
            out_image = out_image.round().clamp(info.min, info.max)
        out_image = out_image.to(image.dtype).expand(channels, crop_height, crop_width).clone()
        # the overlap of the window and the image, in both coordinate frames
        y0, y1 = max(top, 0), min(top + crop_height, height)
        x0, x1 = max(left, 0), min(left + crop_width, width)
        out_image[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
        if label is None:
            return out_image, None
        out_label = torch.full((crop_height, crop_width), self.ignore_index, dtype=label.dtype)
        out_label[y0 - top:y1 - top, x0 - left:x1 - left] = label[y0:y1, x0:x1]
        return out_image, out_label

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, ignore_index={self.ignore_index}, image_fill={self.image_fill})"


class RandomHorizontalFlip:
    """Mirrors image and label left–right with probability p."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "RandomHorizontalFlip")
        if torch.rand((), generator=self.generator).item() < self.p:
            image = image.flip(-1)
            label = label.flip(-1) if label is not None else None
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Photometric jitter of the image only (brightness, then contrast, then saturation).

    Each factor is drawn uniformly from [1 − x, 1 + x]: brightness multiplies the pixels, contrast
    blends with the mean grey level, saturation blends with the grey image (ITU-R 601 luma). The
    image must be RGB on the 0–255 scale (uint8, or float before Normalize); results are clamped
    to 0…255 and keep the input dtype.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ColorJitter {name} must lie in [0, 1], got {value}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation = float(saturation)
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "ColorJitter")
        if image.shape[0] != 3:
            raise ValueError(f"ColorJitter needs an RGB image [3, H, W], got {tuple(image.shape)}")
        factors = [_uniform(1 - x, 1 + x, self.generator)
                   for x in (self.brightness, self.contrast, self.saturation)]
        x = image.float()
        x = x * factors[0]
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).clamp(0, 255)
        x = (grey.mean() + factors[1] * (x - grey.mean())).clamp(0, 255)
        grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        x = (grey + factors[2] * (x - grey)).clamp(0, 255)
        x = x.to(image.dtype) if image.is_floating_point() else x.round().to(image.dtype)
        return x, label

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation})")


class Resize:
    """Resizes to ``size``: an int sets the shorter side (aspect ratio kept, the longer side rounded),
    (height, width) sets both. Image: bicubic (or bilinear), clamped to the input's value range;
    label: nearest neighbour."""

    def __init__(self, size: Union[int, Sequence[int]], interpolation: str = "bicubic"):
        if isinstance(size, numbers.Integral):
            if size <= 0:
                raise ValueError(f"Resize size must be positive, got {size}")
            self.size: Union[int, Tuple[int, int]] = int(size)
        else:
            self.size = _size_pair(size, "Resize size")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """The (height, width) an image of height × width gets."""
        if not isinstance(self.size, int):
            return self.size
        if height <= width:
            return self.size, max(1, round(width * self.size / height))
        return max(1, round(height * self.size / width)), self.size

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "Resize")
        return _resample(image, label, self.output_size(*image.shape[1:]), self.interpolation)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, {self.interpolation!r})"


class ToFloat:
    """image → float32 (values unchanged: uint8 0…255 stays on the 0–255 scale)."""

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "ToFloat")
        return image.to(torch.float32), label

    def __repr__(self) -> str:
        return "ToFloat()"


def normalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(image − mean) / std per channel on the 0–255 scale, as the training transforms do.

    Args:
        image (Tensor[..., 3, H, W] uint8 or float in 0–255): RGB.
        mean, std: per-channel values on the 0–255 scale (e.g. the Cityscapes 75.2, 85.0, 75.1).

    Returns:
        Tensor of image's shape, float32 (image's dtype when it is already floating point).
    """
    if image.dim() < 3:
        raise ValueError(f"image must be [..., C, H, W], got shape {tuple(image.shape)}")
    channels = image.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels} for image of shape "
                         f"{tuple(image.shape)}), got mean={list(mean)} and std={list(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")
    dtype = image.dtype if image.is_floating_point() else torch.float32
    mean_t = torch.as_tensor(mean, dtype=dtype, device=image.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=dtype, device=image.device).view(-1, 1, 1)
    return (image.to(dtype) - mean_t) / std_t


class Normalize:
    """image → float32 (image − mean) / std, per channel, with mean and std on the 0–255 scale."""

    def __init__(self, mean: Sequence[float] = CITYSCAPES_MEAN, std: Sequence[float] = CITYSCAPES_STD):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.mean.numel() != self.std.numel() or not (self.std > 0).all():
            raise ValueError(f"Normalize needs mean and std of the same length and std > 0, got "
                             f"mean={list(mean)}, std={list(std)}")

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> Pair:
        _check_pair(image, label, "Normalize")
        if image.shape[0] != self.mean.numel():
            raise ValueError(f"Normalize has {self.mean.numel()} channel means, image has "
                             f"{image.shape[0]} channels")
        return normalize_image(image.to(torch.float32), self.mean.tolist(), self.std.tolist()), label

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def segmentation_train_transforms(crop_size: Union[int, Sequence[int]],
                                  scale_range: Tuple[float, float] = (0.5, 2.0),
                                  mean: Sequence[float] = CITYSCAPES_MEAN,
                                  std: Sequence[float] = CITYSCAPES_STD,
                                  jitter: Optional[Tuple[float, float, float]] = (0.2, 0.2, 0.2),
                                  flip: bool = True, generator: Optional[torch.Generator] = None) -> Compose:
    """The usual training pipeline: RandomScale(scale_range, bilinear) → RandomCrop(crop_size; pad
    with the mean colour, which Normalize turns into 0, and 255 labels) → RandomHorizontalFlip(0.5)
    → ColorJitter(*jitter) (skipped for None) → Normalize(mean, std). Output image float32
    [3, crop_h, crop_w], label int64 [crop_h, crop_w]."""
    steps = [RandomScale(*scale_range, generator=generator),
             RandomCrop(crop_size, image_fill=tuple(mean), generator=generator)]
    if flip:
        steps.append(RandomHorizontalFlip(0.5, generator=generator))
    if jitter is not None:
        steps.append(ColorJitter(*jitter, generator=generator))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def segmentation_eval_transforms(mean: Sequence[float] = CITYSCAPES_MEAN,
                                 std: Sequence[float] = CITYSCAPES_STD) -> Compose:
    """Evaluation at full resolution: Normalize(mean, std) only."""
    return Compose([Normalize(mean, std)])

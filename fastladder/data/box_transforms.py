"""SSD data augmentation for detection: transforms of (image, target) pairs that keep boxes consistent.

Each transform is a callable ``(image, target) -> (image, target)``:

- image: Tensor[3, H, W], uint8 or floating point on the 0-255 scale (RGB); PhotometricDistort
  returns float32, Resize keeps the dtype, ToFloatNormalize returns normalized float32.
- target: {"boxes": float Tensor[M, 4] xyxy pixels (x2, y2 exclusive), "labels": Tensor[M],
  "ignore": bool Tensor[M], ...}; transforms that drop boxes drop the same rows of "labels" and
  "ignore" (other keys pass unchanged). The input target is never modified in place.

Random transforms draw from an optional ``torch.Generator`` given to their constructor (the
global generator otherwise), so a seeded generator reproduces a pipeline exactly. In a DataLoader
with workers, every worker gets a copy of that generator in the same state (so the same stream):
leave it None there, and each worker draws from its own, differently seeded, global generator.

The SSD recipe (Liu et al. 2016, the original Caffe data layer): photometric distortion, zoom
out up to 4x on a mean-filled canvas, min-IoU random crop, horizontal flip, resize.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastladder.data.registry import IMAGENET_MEAN, IMAGENET_STD
from fastladder.data.transforms import Compose, normalize_image

__all__ = [
    "Compose", "PhotometricDistort", "Expand", "MinIoURandomCrop", "RandomHorizontalFlip", "Resize",
    "ToFloatNormalize", "ssd_train_transforms", "ssd_eval_transforms", "collate_detection",
    "relative_targets", "IMAGENET_MEAN", "IMAGENET_STD",
]

Target = Dict[str, torch.Tensor]


_PER_BOX_KEYS = ("boxes", "labels", "ignore")


def _uniform(generator: Optional[torch.Generator], low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _chance(generator: Optional[torch.Generator], probability: float) -> bool:
    return torch.rand((), generator=generator, dtype=torch.float64).item() < probability


def _check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: image must be a Tensor[3, H, W], got {shape}")


def _boxes(target: Target, name: str) -> torch.Tensor:
    boxes = target.get("boxes")
    if boxes is None or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = None if boxes is None else tuple(boxes.shape)
        raise ValueError(f"{name}: target['boxes'] must be a Tensor[M, 4], got {shape}")
    return boxes


def _select(target: Target, keep: torch.Tensor) -> Target:
    """A copy of target with only the kept rows of its per-box entries."""
    return {key: (value[keep] if key in _PER_BOX_KEYS else value) for key, value in target.items()}


def _with_boxes(target: Target, boxes: torch.Tensor) -> Target:
    result = dict(target)
    result["boxes"] = boxes
    return result


# ---------------------------------------------------------------------------------------------
# photometric distortion

def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB in [0, 1] -> [3, H, W] (hue in [0, 1), saturation, value)."""
    red, green, blue = rgb.unbind(0)
    value, _ = rgb.max(0)
    minimum, _ = rgb.min(0)
    chroma = value - minimum
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), torch.zeros_like(value))
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == red, (green - blue) / safe_chroma,
                      torch.where(value == green, 2 + (blue - red) / safe_chroma,
                                  4 + (red - green) / safe_chroma))
    hue = torch.where(chroma > 0, torch.remainder(hue / 6, 1.0), torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(0)
    sector_float = torch.floor(hue * 6)
    fraction = hue * 6 - sector_float
    sector = sector_float.long().remainder(6)
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # per sector (0..5) which of (value, q, p, t) each channel takes
    candidates = torch.stack([value, q, p, t])                                        # [4, H, W]
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]],
                         device=hsv.device)
    picks = table[sector].permute(2, 0, 1)                                            # [3, H, W]
    return torch.gather(candidates, 0, picks)


class PhotometricDistort:
    """SSD's photometric distortion on the 0-255 scale, each step with probability ``p``: brightness
    (add a uniform delta), contrast (multiply) before or after (50/50) saturation (multiply S) and
    hue (shift H, in degrees) in HSV, then a random channel permutation. Values are clamped to
    [0, 255] after every step, as the original uint8 pipeline saturates. Returns float32."""

    def __init__(self, brightness_delta: float = 32.0, contrast: Tuple[float, float] = (0.5, 1.5),
                 saturation: Tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0, p: float = 0.5,
                 generator: Optional[torch.Generator] = None):
        self.brightness_delta, self.contrast, self.saturation = float(brightness_delta), contrast, saturation
        self.hue_delta, self.p, self.generator = float(hue_delta), float(p), generator

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        generator = self.generator
        pixels = image.to(torch.float32)
        if _chance(generator, self.p):
            delta = _uniform(generator, -self.brightness_delta, self.brightness_delta)
            pixels = (pixels + delta).clamp(0, 255)
        contrast_first = _chance(generator, 0.5)
        if contrast_first and _chance(generator, self.p):
            pixels = (pixels * _uniform(generator, *self.contrast)).clamp(0, 255)
        saturation_factor = _uniform(generator, *self.saturation) if _chance(generator, self.p) else None
        hue_shift = _uniform(generator, -self.hue_delta, self.hue_delta) if _chance(generator, self.p) \
            else None
        if saturation_factor is not None or hue_shift is not None:
            hsv = _rgb_to_hsv(pixels / 255)
            if saturation_factor is not None:
                hsv[1] = (hsv[1] * saturation_factor).clamp(0, 1)
            if hue_shift is not None:
                hsv[0] = torch.remainder(hsv[0] + hue_shift / 360, 1.0)
            pixels = (_hsv_to_rgb(hsv) * 255).clamp(0, 255)
        if not contrast_first and _chance(generator, self.p):
            pixels = (pixels * _uniform(generator, *self.contrast)).clamp(0, 255)
        if _chance(generator, self.p):
            pixels = pixels[torch.randperm(3, generator=generator)]
        return pixels.contiguous(), target

    def __repr__(self):
        return (f"{type(self).__name__}(brightness_delta={self.brightness_delta}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue_delta={self.hue_delta}, p={self.p})")


# ---------------------------------------------------------------------------------------------
# geometry

class Expand:
    """Zoom out: with probability ``p`` place the image at a random spot of a canvas ``ratio`` times
    larger per side (ratio uniform in [1, max_ratio]), filled with ``mean`` (0-255 scale, rounded
    for uint8 images). Boxes shift with the image."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, max_ratio: float = 4.0, p: float = 0.5,
                 generator: Optional[torch.Generator] = None):
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        if len(mean) != 3:
            raise ValueError(f"mean must have 3 values (RGB), got {len(mean)}")
        self.mean = tuple(float(m) for m in mean)
        self.max_ratio, self.p, self.generator = float(max_ratio), float(p), generator

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        boxes = _boxes(target, type(self).__name__)
        if not _chance(self.generator, self.p):
            return image, target
        _, height, width = image.shape
        ratio = _uniform(self.generator, 1.0, self.max_ratio)
        canvas_height, canvas_width = int(height * ratio), int(width * ratio)
        left = int(_uniform(self.generator, 0, canvas_width - width))
        top = int(_uniform(self.generator, 0, canvas_height - height))
        fill = torch.tensor(self.mean, dtype=torch.float32)
        if not image.is_floating_point():
            fill = fill.round()
        canvas = fill.to(image.dtype).view(3, 1, 1).expand(3, canvas_height, canvas_width).clone()
        canvas[:, top:top + height, left:left + width] = image
        shift = torch.tensor([left, top, left, top], dtype=boxes.dtype)
        return canvas, _with_boxes(target, boxes + shift)

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, max_ratio={self.max_ratio}, p={self.p})"


def _iou_with_rect(boxes: torch.Tensor, rect: Tuple[int, int, int, int]) -> torch.Tensor:
    x1, y1, x2, y2 = rect
    width = (boxes[:, 2].clamp(max=x2) - boxes[:, 0].clamp(min=x1)).clamp(min=0)
    height = (boxes[:, 3].clamp(max=y2) - boxes[:, 1].clamp(min=y1)).clamp(min=0)
    intersection = width * height
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    union = areas + (x2 - x1) * (y2 - y1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def _centres_inside(boxes: torch.Tensor, rect: Tuple[int, int, int, int]) -> torch.Tensor:
    x1, y1, x2, y2 = rect
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (centre_x > x1) & (centre_x < x2) & (centre_y > y1) & (centre_y < y2)


class MinIoURandomCrop:
    """SSD's random crop. A constraint is drawn from ``min_ious`` (None = keep the whole image);
    then up to ``max_trials`` patches are sampled: sides uniform in [min_scale, 1] of the image's,
    aspect ratio h / w in ``aspect_range``, position uniform. A patch is accepted when some box has
    IoU >= the constraint with it (the Caffe sampler's rule, also torchvision's) and at least one
    box centre lies strictly inside it (an image without boxes accepts any patch; ignored boxes
    count like the others). The boxes whose
    centres are inside are kept, clipped to the patch and shifted; the others are dropped. When
    no trial succeeds the input is returned unchanged (the Caffe layer's fallback)."""

    def __init__(self, min_ious: Sequence[Optional[float]] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
                 min_scale: float = 0.3, aspect_range: Tuple[float, float] = (0.5, 2.0), max_trials: int = 50,
                 generator: Optional[torch.Generator] = None):
        if not min_ious:
            raise ValueError("min_ious must hold at least one option")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_ious, self.min_scale = tuple(min_ious), float(min_scale)
        self.aspect_range, self.max_trials, self.generator = tuple(aspect_range), int(max_trials), generator

    def sample(self, height: int, width: int, boxes: torch.Tensor
               ) -> Optional[Tuple[Tuple[int, int, int, int], float]]:
        """Draws a patch ``((x1, y1, x2, y2) integer pixels, its min IoU)`` or None (keep the image)."""
        choice = int(torch.randint(len(self.min_ious), (), generator=self.generator))
        min_iou = self.min_ious[choice]
        if min_iou is None:
            return None
        for _ in range(self.max_trials):
            patch_width = _uniform(self.generator, self.min_scale * width, width)
            patch_height = _uniform(self.generator, self.min_scale * height, height)
            if not self.aspect_range[0] <= patch_height / patch_width <= self.aspect_range[1]:
                continue
            left = _uniform(self.generator, 0, width - patch_width)
            top = _uniform(self.generator, 0, height - patch_height)
            rect = (int(left), int(top), int(left + patch_width), int(top + patch_height))
            if rect[2] <= rect[0] or rect[3] <= rect[1]:
                continue
            if boxes.shape[0]:
                if _iou_with_rect(boxes.double(), rect).max() < min_iou:
                    continue
                if not _centres_inside(boxes, rect).any():
                    continue
            return rect, float(min_iou)
        return None

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        boxes = _boxes(target, type(self).__name__)
        _, height, width = image.shape
        sampled = self.sample(height, width, boxes)
        if sampled is None:
            return image, target
        (x1, y1, x2, y2), _ = sampled
        keep = _centres_inside(boxes, (x1, y1, x2, y2))
        kept = _select(target, keep)
        clipped = kept["boxes"].clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(x1, x2) - x1
        clipped[:, 1::2] = clipped[:, 1::2].clamp(y1, y2) - y1
        kept["boxes"] = clipped
        return image[:, y1:y2, x1:x2].contiguous(), kept

    def __repr__(self):
        return (f"{type(self).__name__}(min_ious={self.min_ious}, min_scale={self.min_scale}, "
                f"aspect_range={self.aspect_range}, max_trials={self.max_trials})")


class RandomHorizontalFlip:
    """Mirrors image and boxes left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = float(p), generator

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        boxes = _boxes(target, type(self).__name__)
        if not _chance(self.generator, self.p):
            return image, target
        width = image.shape[-1]
        flipped = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        return image.flip(-1), _with_boxes(target, flipped)

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p})"


class Resize:
    """Resizes the image to ``size`` ((H, W), or an int for a square) with bilinear interpolation
    (antialiased when shrinking, as torchvision's tensor Resize) and scales the boxes to match.
    uint8 images are rounded back to uint8."""

    def __init__(self, size: Union[int, Tuple[int, int]], antialias: bool = True):
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be a positive int or (H, W), got {size}")
        self.size, self.antialias = (int(size[0]), int(size[1])), bool(antialias)

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        boxes = _boxes(target, type(self).__name__)
        _, height, width = image.shape
        new_height, new_width = self.size
        if (height, width) != self.size:
            resized = F.interpolate(image.unsqueeze(0).to(torch.float32), size=self.size, mode="bilinear",
                                    align_corners=False, antialias=self.antialias)[0]
            image = resized.round().clamp(0, 255).to(image.dtype) if not image.is_floating_point() else \
                resized.to(image.dtype)
        # multiply then divide in float64: a box edge on the old border lands exactly on the new one
        numerator = torch.tensor([new_width, new_height] * 2, dtype=torch.float64, device=boxes.device)
        denominator = torch.tensor([width, height] * 2, dtype=torch.float64, device=boxes.device)
        return image, _with_boxes(target, (boxes.double() * numerator / denominator).to(boxes.dtype))

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, antialias={self.antialias})"


class ToFloatNormalize:
    """``(image.float() - mean) / std`` per channel, mean and std on the 0-255 scale. Target unchanged."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 values (std positive), got {tuple(mean)} and "
                             f"{tuple(std)}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, image, target):
        _check_image(image, type(self).__name__)
        return normalize_image(image.to(torch.float32), self.mean, self.std), target

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def ssd_train_transforms(size: Union[int, Tuple[int, int]] = 300, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD,
                         generator: Optional[torch.Generator] = None) -> Compose:
    """SSD training augmentation: PhotometricDistort, Expand (4x, mean fill), MinIoURandomCrop,
    RandomHorizontalFlip, Resize(size), ToFloatNormalize(mean, std)."""
    return Compose([
        PhotometricDistort(generator=generator),
        Expand(mean, generator=generator),
        MinIoURandomCrop(generator=generator),
        RandomHorizontalFlip(generator=generator),
        Resize(size),
        ToFloatNormalize(mean, std),
    ])


def ssd_eval_transforms(size: Union[int, Tuple[int, int]] = 300, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Resize(size), ToFloatNormalize(mean, std): boxes stay in pixels of the resized image."""
    return Compose([Resize(size), ToFloatNormalize(mean, std)])


# ---------------------------------------------------------------------------------------------
# batching

def collate_detection(batch: Sequence[Tuple[torch.Tensor, Target]]) -> Tuple[torch.Tensor, List[Target]]:
    """DataLoader collate_fn: ``[(image [3, H, W], target)] -> (images [B, 3, H, W], [target])``.
    All images must have one size (resize them first)."""
    if len(batch) == 0:
        raise ValueError("collate_detection got an empty batch")
    images = [image for image, _ in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"collate_detection: images must share one shape to be stacked, got "
                         f"{sorted(shapes)}")
    return torch.stack(images), [target for _, target in batch]


def relative_targets(targets: Sequence[Target], image_size: Tuple[int, int]) -> List[Target]:
    """Targets with boxes divided by the image size, for losses on image-relative priors.

    Args:
        targets: per image {"boxes": [M, 4] xyxy pixels, ...}.
        image_size: (H, W) of the (batched) images the boxes refer to.

    Returns:
        copies whose "boxes" are float32 ``(x1 / W, y1 / H, x2 / W, y2 / H)`` clipped to [0, 1]; the
        other entries ("labels", "ignore": the loss decides what to do with ignored boxes) are kept.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be a positive (H, W), got {tuple(image_size)}")
    result = []
    for index, target in enumerate(targets):
        boxes = _boxes(target, f"relative_targets: targets[{index}]")
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        result.append(_with_boxes(target, (boxes.to(torch.float32) / scale).clamp(0, 1)))
    return result

"""SSD: Single Shot MultiBox Detector with a VGG16 backbone (Liu et al., ECCV 2016).

VGG16 with torchvision's layer indices (``features.N``), so torchvision's ImageNet VGG16 state_dict
loads as is (its ``classifier`` is not used); pool5 is 3×3 stride 1 padding 1, fc6 a 3×3 convolution
with dilation 6 → 1024 and fc7 a 1×1 convolution → 1024; conv4_3 is L2-normalised with a learnable
per-channel scale (initialised to 20); extra layers (1×1 then 3×3 convolutions) halve the maps
further. A 3×3 multibox head on every map predicts, for every prior (default box), 4 box offsets
and C class logits (class 0 = background).

Input: RGB images normalised with ImageNet's mean and std (``fastladder.data.registry.IMAGENET_MEAN``
and ``IMAGENET_STD``, on the 0–255 pixel scale), the statistics the VGG16 ImageNet weights were
trained with: ``(pixel - mean) / std`` per channel. The normalisation is the caller's (the data
pipeline's), so that the model sees exactly what it is given.

Priors: image-relative ``(cx, cy, w, h)``; aspect ratio ``ar = w / h`` with ``w = s·sqrt(ar)``,
``h = s/sqrt(ar)`` (ar < 1: taller than wide); see :func:`ssd_priors`. In train mode the model
returns the raw head outputs for :class:`fastladder.train.multibox.MultiBoxLoss`; in eval mode the
padded detections of the fused ``ssd_postprocess``.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.models._registry import register_model
from fastladder.models._state_dict import copy_into, key_problems
from fastladder.models._checkpoint import read_state_dict
from fastladder.models.densenet import WeightsLike
from fastladder.nn.detection import DetectionPostprocess
from fastladder.nn.ssd import L2Norm, SSDHead
from fastladder.ops.boxes import Detections, ssd_postprocess

__all__ = ["ssd_priors", "priors_per_location", "SSD", "ssd300_vgg16", "ssd512_vgg16", "SSD300_CONFIG",
           "SSD512_CONFIG"]

SizeLike = Union[int, Tuple[int, int]]

# torchvision's VGG16 ("D") features: channels of the 3×3 convolutions, "M" for a 2×2 max pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CONV4_3_INDEX = 22   # features[22] is conv4_3's ReLU: the first prediction map
POOL3_INDEX = 16     # ceil_mode, so that 75 → 38 (the 38×38 conv4_3 map of SSD300)

# Extra layers: (1×1 channels, 3×3 channels, kernel, stride, padding) of each block.
SSD300_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0))
SSD512_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
                 (128, 256, 4, 1, 1))

# The original Caffe configurations (VOC). Sizes and steps in pixels of the image_size input;
# aspect ratios listed without 1 and without reciprocals (flip=True adds them).
SSD300_CONFIG = dict(
    image_size=300, extra_layers=SSD300_EXTRAS, steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264), max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))
SSD512_CONFIG = dict(
    image_size=512, extra_layers=SSD512_EXTRAS, steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)))


# --- priors -------------------------------------------------------------------------------------

def _pair(value, name: str) -> Tuple[float, float]:
    """(y, x) of a number or an (h, w) pair."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    pair = isinstance(value, (tuple, list)) and len(value) == 2
    if pair and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    raise ValueError(f"{name} must be a number or an (h, w) pair, got {value!r}")


def _unique_ratios(ratios: Sequence[float], flip: bool, name: str) -> List[float]:
    """The aspect ratios of one map besides 1, reciprocals added when flip, duplicates dropped."""
    out: List[float] = []
    for r in ratios:
        if not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"{name} must hold positive finite numbers, got {tuple(ratios)!r}")
        for candidate in ((float(r), 1.0 / r) if flip else (float(r),)):
            if all(abs(candidate - seen) > 1e-6 for seen in [1.0] + out):
                out.append(candidate)
    return out


def priors_per_location(aspect_ratios: Sequence[Sequence[float]], max_sizes: Optional[Sequence] = None,
                        flip: bool = True) -> List[int]:
    """Priors per location of each map, as :func:`ssd_priors` lays them out (the head's A)."""
    counts = []
    for k, ratios in enumerate(aspect_ratios):
        extra = max_sizes is not None and max_sizes[k] is not None
        counts.append(1 + int(extra) + len(_unique_ratios(ratios, flip, f"aspect_ratios[{k}]")))
    return counts


def ssd_priors(image_size: SizeLike, feature_sizes: Sequence[SizeLike], steps: Optional[Sequence] = None,
               min_sizes: Sequence[float] = (), max_sizes: Optional[Sequence[Optional[float]]] = None,
               aspect_ratios: Optional[Sequence[Sequence[float]]] = None, clip: bool = True, *,
               flip: bool = True, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """SSD prior (default) boxes, image-relative ``(cx, cy, w, h)``.

    For map k of size h_k × w_k, location (i, j) (row, column) has its centre at
    ``cx = (j + 0.5) · step_x / W``, ``cy = (i + 0.5) · step_y / H`` and these priors, in order:

    1. a square of side ``min_sizes[k]``: ``w = min_size / W``, ``h = min_size / H``;
    2. if ``max_sizes[k]`` is given, a square of side ``sqrt(min_sizes[k] · max_sizes[k])``;
    3. for every aspect ratio ``ar = w / h`` of ``aspect_ratios[k]`` (after it, ``1 / ar`` when
       ``flip``): ``w = min_size · sqrt(ar) / W``, ``h = min_size / sqrt(ar) / H``. So ar = 2 is a
       wide box and ar = 0.5 (or 1/3, 0.3 …) a tall one, e.g. for pedestrians. A ratio of 1 or a
       repeated ratio (also after flipping) is dropped: ratio 1 is always there as prior 1.

    The priors are ordered map by map, then by row i, column j, then as above — the order in
    which :class:`fastladder.nn.ssd.SSDHead` flattens its outputs. The SSD300 configuration
    (:data:`SSD300_CONFIG`, maps 38, 19, 10, 5, 3, 1) gives 4, 6, 6, 6, 4, 4 priors per location,
    8732 in all; SSD512's (:data:`SSD512_CONFIG`) 24564.

    Args:
        image_size: H = W, or (H, W), in pixels.
        feature_sizes: each map's side, or its (h, w).
        steps: each map's distance between neighbouring centres in pixels (a number or (step_y,
            step_x)); None (all maps) or a None entry: ``image_size / feature_size`` per axis.
        min_sizes: each map's base prior side in pixels.
        max_sizes: each map's max size (pixels) for the extra square prior, or None for none.
        aspect_ratios: each map's ratios (besides 1); None: no ratio priors.
        clip: clamp w and h to [0, 1] (a prior is never wider or taller than the image), as
            torchvision's DefaultBoxGenerator does; centres stay on the grid (with the Caffe steps
            the last centres of the 10×10 map lie at 9.5 · 32 / 300 = 1.013, just outside).
        flip: add ``1 / ar`` for every ``ar`` (the Caffe PriorBox ``flip``).
        dtype, device: of the result (computed in float64).

    Returns:
        Tensor[P, 4] of ``(cx, cy, w, h)`` in units of the image's width (cx, w) and height (cy, h).
    """
    image_h, image_w = _pair(image_size, "image_size")
    if image_h <= 0 or image_w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    num_maps = len(feature_sizes)
    if len(min_sizes) != num_maps:
        raise ValueError(f"min_sizes must have one entry per feature map ({num_maps}: feature_sizes="
                         f"{tuple(feature_sizes)}), got {len(min_sizes)}: {tuple(min_sizes)}")
    for name, values in (("steps", steps), ("max_sizes", max_sizes), ("aspect_ratios", aspect_ratios)):
        if values is not None and len(values) != num_maps:
            raise ValueError(f"{name} must have one entry per feature map ({num_maps}: feature_sizes="
                             f"{tuple(feature_sizes)}), got {len(values)}: {tuple(values)}")
    out = []
    for k, feature_size in enumerate(feature_sizes):
        rows, cols = _pair(feature_size, f"feature_sizes[{k}]")
        if rows < 1 or cols < 1 or rows != int(rows) or cols != int(cols):
            raise ValueError(f"feature_sizes[{k}] must be positive integers, got {feature_size!r}")
        rows, cols = int(rows), int(cols)
        step = None if steps is None else steps[k]
        step_y, step_x = (image_h / rows, image_w / cols) if step is None else _pair(step, f"steps[{k}]")
        min_size = float(min_sizes[k])
        if not min_size > 0:
            raise ValueError(f"min_sizes[{k}] must be positive, got {min_sizes[k]!r}")
        shapes = [(min_size, min_size)]  # (w, h) in pixels
        if max_sizes is not None and max_sizes[k] is not None:
            if not float(max_sizes[k]) > 0:
                raise ValueError(f"max_sizes[{k}] must be positive, got {max_sizes[k]!r}")
            side = math.sqrt(min_size * float(max_sizes[k]))
            shapes.append((side, side))
        ratios = [] if aspect_ratios is None else _unique_ratios(aspect_ratios[k], flip,
                                                                 f"aspect_ratios[{k}]")
        shapes += [(min_size * math.sqrt(r), min_size / math.sqrt(r)) for r in ratios]
        sizes = torch.tensor(shapes, dtype=torch.float64) / torch.tensor([image_w, image_h],
                                                                         dtype=torch.float64)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * (step_y / image_h)
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * (step_x / image_w)
        centers = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), dim=-1)  # [rows, cols, 2] of (cx, cy)
        priors = torch.cat([centers[:, :, None, :].expand(rows, cols, len(shapes), 2),
                            sizes[None, None].expand(rows, cols, len(shapes), 2)], dim=-1)
        out.append(priors.reshape(-1, 4))
    priors = torch.cat(out) if out else torch.zeros(0, 4, dtype=torch.float64)
    if clip:
        priors = torch.cat([priors[:, :2], priors[:, 2:].clamp(0.0, 1.0)], dim=1)
    return priors.to(dtype=dtype, device=device)


# --- blocks -------------------------------------------------------------------------------------

def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def make_vgg16_features(width: float = 1.0, in_channels: int = 3) -> Tuple[nn.Sequential, int, int]:
    """torchvision's ``vgg16().features`` (same indices, so the same state_dict keys) with SSD's
    changes: pool3 rounds up (ceil_mode) and pool5 is 3×3 stride 1 padding 1 (keeps the 1/16 map).

    Returns (features, channels of conv4_3, channels of conv5_3)."""
    layers: List[nn.Module] = []
    channels = in_channels
    conv4_3 = 0
    for value in VGG16_LAYERS:
        if value == "M":
            index = len(layers)
            if index == 30:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=index == POOL3_INDEX))
            continue
        out = _scaled(value, width)
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        channels = out
        if len(layers) - 1 == CONV4_3_INDEX:
            conv4_3 = channels
    return nn.Sequential(*layers), conv4_3, channels


def _output_side(module: nn.Module, size: int, axis: int) -> int:
    """The side of ``module``'s output along axis 0 (H) or 1 (W) for an input side, per PyTorch's rules."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        def at(v):
            return v if isinstance(v, int) else v[axis]
        kernel, stride, padding, dilation = (at(module.kernel_size), at(module.stride), at(module.padding),
                                             at(module.dilation))
        span = size + 2 * padding - dilation * (kernel - 1) - 1
        if isinstance(module, nn.MaxPool2d) and module.ceil_mode:
            out = -(-span // stride) + 1
            if (out - 1) * stride >= size + padding:  # the last window must start inside the input
                out -= 1
            return out
        return span // stride + 1
    if isinstance(module, nn.Sequential):
        for child in module:
            size = _output_side(child, size, axis)
        return size
    return size


# --- model --------------------------------------------------------------------------------------

class SSD(nn.Module):
    """SSD with a VGG16 backbone.

    Args:
        num_classes: C, including the background class 0.
        image_size: the input size the priors are laid out for (H = W, or (H, W)); the feature map
            sizes follow from it through the layers.
        extra_layers: the extra blocks after fc7, each ``(1×1 channels, 3×3 channels, kernel,
            stride, padding)`` (:data:`SSD300_EXTRAS`, :data:`SSD512_EXTRAS`); the model predicts
            on conv4_3, fc7 and every extra block's output.
        min_sizes, max_sizes, steps, aspect_ratios, flip, clip: the priors (:func:`ssd_priors`),
            one entry per prediction map; sizes and steps in pixels of ``image_size``.
        width: multiplier of every VGG, fc6/fc7 and extra-layer channel count (a reduced SSD for
            CPU training and tests); ``backbone_weights`` need width 1.
        l2norm_scale: initial conv4_3 scale (20).
        score_thresh, nms_thresh, topk, max_detections, variances: the eval post-processing
            (:class:`fastladder.nn.DetectionPostprocess`; the paper's 0.01, 0.45, 400, 200, (0.1, 0.2)).
        in_channels: image channels.

    Any input size whose maps are all non-empty works: for an input other than ``image_size``
    :meth:`priors_for` lays the priors out on the actual maps (same pixel sizes, centres on each
    map's grid), cached per size.

    Shapes: x [B, in_channels, H, W] (ImageNet-normalised, see the module docstring) →
    train: ``(loc [B, P, 4], conf_logits [B, P, C])``, the offsets (dx, dy, dw, dh) and logits of
    the P priors (:attr:`priors`, or :meth:`priors_for` (H, W)); eval: :class:`Detections`
    ``(boxes [B, K, 4] image-relative xyxy, scores [B, K], labels [B, K], num_detections [B])``.

    Example::

        model = ssd300_vgg16(num_classes=21, backbone_weights="vgg16-397923af.pth")
        criterion = MultiBoxLoss(21)                       # fastladder.train.multibox
        loc, conf_logits = model(images)                   # train mode
        loss, parts = criterion(loc, conf_logits, model.priors, gt_boxes, gt_labels)
        detections = model.eval()(images).to_list()        # [(boxes, scores, labels)] per image
    """

    def __init__(self, num_classes: int = 21, *, image_size: SizeLike = 300,
                 extra_layers: Sequence[Tuple[int, int, int, int, int]] = SSD300_EXTRAS,
                 min_sizes: Sequence[float] = SSD300_CONFIG["min_sizes"],
                 max_sizes: Optional[Sequence[Optional[float]]] = SSD300_CONFIG["max_sizes"],
                 steps: Optional[Sequence] = SSD300_CONFIG["steps"],
                 aspect_ratios: Optional[Sequence[Sequence[float]]] = SSD300_CONFIG["aspect_ratios"],
                 flip: bool = True, clip: bool = True, width: float = 1.0, l2norm_scale: float = 20.0,
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, topk: int = 400,
                 max_detections: int = 200, variances: Sequence[float] = (0.1, 0.2), in_channels: int = 3):
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0 and math.isfinite(width)):
            raise ValueError(f"width must be a positive number, got {width!r}")
        image_h, image_w = _pair(image_size, "image_size")
        if image_h != int(image_h) or image_w != int(image_w) or image_h < 1 or image_w < 1:
            raise ValueError(f"image_size must be a positive integer or (H, W) pair, got {image_size!r}")
        self.image_size = (int(image_h), int(image_w))
        extra_layers = tuple(tuple(int(v) for v in block) for block in extra_layers)
        if any(len(block) != 5 for block in extra_layers):
            raise ValueError(f"extra_layers must hold (1×1 channels, 3×3 channels, kernel, stride, padding) "
                             f"tuples, got {extra_layers!r}")
        num_maps = 2 + len(extra_layers)
        if aspect_ratios is None:
            aspect_ratios = ((),) * num_maps
        self.config = dict(num_classes=num_classes, image_size=self.image_size, extra_layers=extra_layers,
                           min_sizes=tuple(min_sizes),
                           max_sizes=None if max_sizes is None else tuple(max_sizes),
                           steps=None if steps is None else tuple(steps),
                           aspect_ratios=tuple(tuple(r) for r in aspect_ratios), flip=flip, clip=clip,
                           width=width, l2norm_scale=l2norm_scale, score_thresh=score_thresh,
                           nms_thresh=nms_thresh, topk=topk, max_detections=max_detections,
                           variances=tuple(variances), in_channels=in_channels)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.width = float(width)

        self.features, conv4_3_channels, conv5_channels = make_vgg16_features(width, in_channels)
        self.l2norm = L2Norm(conv4_3_channels, scale=l2norm_scale)
        fc_channels = _scaled(1024, width)
        self.fc6 = nn.Conv2d(conv5_channels, fc_channels, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.extras = nn.ModuleList()
        channels, map_channels = fc_channels, [conv4_3_channels, fc_channels]
        for reduce_channels, out_channels, kernel, stride, padding in extra_layers:
            reduce_channels, out_channels = _scaled(reduce_channels, width), _scaled(out_channels, width)
            self.extras.append(nn.Sequential(OrderedDict([
                ("reduce", nn.Conv2d(channels, reduce_channels, kernel_size=1)),
                ("reduce_relu", nn.ReLU(inplace=True)),
                ("conv", nn.Conv2d(reduce_channels, out_channels, kernel_size=kernel, stride=stride,
                                   padding=padding)),
                ("relu", nn.ReLU(inplace=True)),
            ])))
            channels = out_channels
            map_channels.append(channels)

        feature_sizes = self.feature_sizes(self.image_size)
        if min(min(s) for s in feature_sizes) < 1:
            raise ValueError(f"image_size {self.image_size} is too small for this SSD: its maps would be "
                             f"{feature_sizes}")
        self._prior_kwargs = dict(min_sizes=tuple(min_sizes), max_sizes=max_sizes,
                                  aspect_ratios=aspect_ratios, clip=clip, flip=flip)
        priors = ssd_priors(self.image_size, feature_sizes, steps, **self._prior_kwargs)
        self.head = SSDHead(map_channels, priors_per_location(aspect_ratios, max_sizes, flip), num_classes)
        self.postprocess = DetectionPostprocess(priors, num_classes, score_thresh=score_thresh,
                                                nms_thresh=nms_thresh, topk=topk,
                                                max_detections=max_detections, variances=variances,
                                                background=0)
        self._priors_cache: Dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's VGG initialisation for the body (Kaiming-normal, fan-out, zero bias), Xavier
        for the head, 20 for the L2Norm scale."""
        for module in [self.features, self.fc6, self.fc7, self.extras]:
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        self.head.reset_parameters()
        self.l2norm.reset_parameters()

    @property
    def priors(self) -> torch.Tensor:
        """Tensor[P, 4] ``(cx, cy, w, h)``: the priors of an ``image_size`` input (a buffer)."""
        return self.postprocess.priors

    @property
    def priors_per_location(self) -> Tuple[int, ...]:
        return self.head.priors_per_location

    def feature_sizes(self, image_size: SizeLike) -> List[Tuple[int, int]]:
        """(h, w) of every prediction map for an input of ``image_size`` (H = W or (H, W)), by the
        layers' size arithmetic (no forward pass); a side below 1 means the input is too small."""
        image_h, image_w = (int(v) for v in _pair(image_size, "image_size"))
        sides = []
        for axis, side in enumerate((image_h, image_w)):
            per_map = []
            for index, layer in enumerate(self.features):
                side = _output_side(layer, side, axis)
                if index == CONV4_3_INDEX:
                    per_map.append(side)
            side = _output_side(self.fc7, _output_side(self.fc6, side, axis), axis)
            per_map.append(side)
            for extra in self.extras:
                side = _output_side(extra, side, axis)
                per_map.append(side)
            sides.append(per_map)
        return list(zip(*sides))

    def priors_for(self, image_size: SizeLike) -> torch.Tensor:
        """The priors of an input of ``image_size`` (H, W): :attr:`priors` for ``image_size`` itself;
        for another size the same pixel sizes and aspect ratios on the actual maps, centres at
        ``(j + 0.5) · W / w_k`` pixels (steps = input size / map size), image-relative like
        :attr:`priors`. Cached per size, device and dtype."""
        size = tuple(int(v) for v in _pair(image_size, "image_size"))
        if size == self.image_size:
            return self.priors
        buffer = self.priors
        key = (size, buffer.device, buffer.dtype)
        if key not in self._priors_cache:
            feature_sizes = self.feature_sizes(size)
            if min(min(s) for s in feature_sizes) < 1:
                raise ValueError(f"image size {size} is too small for this SSD: its maps would be "
                                 f"{feature_sizes}; H and W must be at least {self.min_input_size()}")
            self._priors_cache[key] = ssd_priors(size, feature_sizes, None, dtype=buffer.dtype,
                                                 device=buffer.device, **self._prior_kwargs)
        return self._priors_cache[key]

    def min_input_size(self) -> int:
        """The smallest square input side for which every prediction map is at least 1×1."""
        side = 1
        while min(min(s) for s in self.feature_sizes(side)) < 1:
            side += 1
        return side

    def check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be an image batch [B, {self.in_channels}, H, W], got {shape}")
        sizes = self.feature_sizes(tuple(x.shape[-2:]))
        if min(min(s) for s in sizes) < 1:
            raise ValueError(f"x of shape {tuple(x.shape)} is too small for this SSD: its prediction maps "
                             f"would be {sizes}; H and W must be at least {self.min_input_size()}")

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The prediction maps: L2-normalised conv4_3, fc7, then every extra block's output."""
        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == CONV4_3_INDEX:
                maps.append(self.l2norm(x))
        x = F.relu(self.fc7(F.relu(self.fc6(x), inplace=True)), inplace=True)
        maps.append(x)
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> Union[Tuple[torch.Tensor, torch.Tensor], Detections]:
        self.check_input(x)
        loc, conf_logits = self.head(self.forward_features(x))
        if self.training:
            return loc, conf_logits
        size = tuple(x.shape[-2:])
        if size == self.image_size:
            return self.postprocess(loc, conf_logits)
        post = self.postprocess
        priors = self.priors_for(size)
        return ssd_postprocess(loc.to(priors.dtype), conf_logits.to(priors.dtype), priors,
                               score_thresh=post.score_thresh, nms_thresh=post.nms_thresh, topk=post.topk,
                               max_detections=post.max_detections, variances=post.variances,
                               background=post.background)

    def _apply(self, fn, *args, **kwargs):
        self._priors_cache = {}  # .to() / .double(): the cached priors follow the buffer lazily
        return super()._apply(fn, *args, **kwargs)

    def load_backbone_weights(self, weights: WeightsLike):
        """Loads torchvision's VGG16 state_dict (a path or a dict, ``features.N.weight`` keys) into
        :attr:`features`; its ``classifier`` (fc) entries are ignored.

        Raises:
            ValueError: the model is not at width 1, or keys are missing, unexpected or of another shape.
        """
        if self.width != 1.0:
            raise ValueError(f"backbone_weights need the full-width VGG16 (width=1.0), this SSD has "
                             f"width={self.width}")
        source = read_state_dict(weights, what="backbone_weights")
        target = OrderedDict((f"features.{k}", v) for k, v in self.features.state_dict().items())
        source = OrderedDict((k, v) for k, v in source.items() if not k.startswith("classifier."))
        problems = key_problems(source, target)
        if problems:
            raise ValueError("backbone_weights are not a torchvision VGG16 state_dict (features.N keys): "
                             + "; ".join(problems))
        copy_into(target, source)


# --- builders -----------------------------------------------------------------------------------

def _ssd(config: dict, num_classes: int, backbone_weights: Optional[WeightsLike], **kwargs) -> SSD:
    image_size = kwargs.get("image_size", config["image_size"])
    nominal = _pair(image_size, "image_size") == _pair(config["image_size"], "image_size")
    for key in ("image_size", "extra_layers", "min_sizes", "max_sizes", "aspect_ratios"):
        kwargs.setdefault(key, config[key])
    # The Caffe steps belong to the nominal size; elsewhere the centres follow each map's grid.
    kwargs.setdefault("steps", config["steps"] if nominal else None)
    if backbone_weights is not None and kwargs.get("width", 1.0) != 1.0:
        raise ValueError(f"backbone_weights need the full-width VGG16 (width=1.0), got "
                         f"width={kwargs['width']}")
    model = SSD(num_classes, **kwargs)
    if backbone_weights is not None:
        model.load_backbone_weights(backbone_weights)
    return model


@register_model
def ssd300_vgg16(num_classes: int = 21, backbone_weights: Optional[WeightsLike] = None, **kwargs) -> SSD:
    """SSD300 (VOC config: 8732 priors; 74.3 mAP on VOC07 test in the paper).

    ``backbone_weights``: torchvision's VGG16 ImageNet state_dict (or a path to it). ``**kwargs``
    go to :class:`SSD` (e.g. ``width=0.25``, ``aspect_ratios=((0.3, 0.5, 2, 3),) * 6, flip=False``).
    The default prior sizes are the paper's pixel sizes for 300×300 inputs."""
    return _ssd(SSD300_CONFIG, num_classes, backbone_weights, **kwargs)


@register_model
def ssd512_vgg16(num_classes: int = 21, backbone_weights: Optional[WeightsLike] = None, **kwargs) -> SSD:
    """SSD512 (VOC config: 7 maps, 24564 priors; 76.9 mAP on VOC07 test in the paper)."""
    return _ssd(SSD512_CONFIG, num_classes, backbone_weights, **kwargs)

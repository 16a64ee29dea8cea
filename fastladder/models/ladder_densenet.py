"""Ladder-style DenseNets for semantic segmentation (Krešo, Šegvić, Krapac, ICCVW 2017).

LDN 4×: a DenseNet whose last block is split in halves with a 2×2 average pool between them
(features at 1/64), a context block (BN-ReLU-1×1 → 512, BN-ReLU-3×3 dilation 2 → 128), four
transition-ups (:class:`fastladder.nn.LadderUpsample`, f = 128) with skips from DB4a, DB3, DB2 and
DB1 (before their transitions), a BN-ReLU-1×1 classifier at 1/4 and bilinear upsampling to the
input size. An auxiliary classifier on the context output gives the 0.3-weighted second loss.
Baselines of the paper's Table 1: ``densenet121_32x`` and ``dilated8_densenet121``.

Any input size works: every upsampling goes to the exact size of its skip (or of the input), so
the logits always have the input's H×W.
"""
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.models._registry import register_model
from fastladder.models.densenet import (DENSENET_CONFIGS, WeightsLike, init_weights, load_densenet_weights,
                                        make_features)
from fastladder.nn import BNReluConv, LadderUpsample, SpatialPyramidPooling
from fastladder.ops.upsample import upsample_bilinear

__all__ = ["ContextBlock", "LadderFeatures", "LadderDenseNet",
           "ladder_densenet121", "ladder_densenet169", "densenet121_32x",
           "dilated8_densenet121"]

ARCHITECTURES = ("ladder", "dilated8", "32x")
CONTEXTS = ("dense", "spp")


# --- blocks -------------------------------------------------------------------------------------

class ContextBlock(nn.Module):
    """The LDN context block: BN-ReLU-1×1 → bottleneck_channels, BN-ReLU-3×3 (dilation 2) → out_channels.

    Shapes: [N, in_channels, h, w] → [N, out_channels, h, w].
    """

    def __init__(self, in_channels: int, bottleneck_channels: int = 512, out_channels: int = 128,
                 dilation: int = 2):
        super().__init__()
        self.reduce = BNReluConv(in_channels, bottleneck_channels)
        self.blend = BNReluConv(bottleneck_channels, out_channels, kernel_size=3, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blend(self.reduce(x))


class LadderFeatures(nn.Sequential):
    """The DenseNet encoder (torchvision's ``features`` children and names) that also hands out the
    decoder's skips: ``forward(x)`` → (coarsest features, the first ``num_skips`` of [DB1, DB2, DB3,
    DB4a], finest first; each block's output before its transition)."""

    def __init__(self, features: nn.Sequential, num_skips: int):
        super().__init__(OrderedDict(features.named_children()))
        self.num_skips = num_skips

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for name, module in self.named_children():
            if name.startswith("transition") and len(skips) < self.num_skips:
                skips.append(x)
            x = module(x)
            if isinstance(x, tuple):  # the split last block: (DB4a, pooled DB4b)
                before, x = x
                if len(skips) < self.num_skips:
                    skips.append(before)
        return x, skips


def _ladder_layout(growth_rate: int, block_config: Sequence[int], num_init_features: int, architecture: str):
    """Channels of the skips the decoder uses, finest first, and the output stride of the features."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if len(block_config) != 4:
        raise ValueError(f"block_config must have 4 blocks, got {tuple(block_config)}")
    channels, num_features = [], num_init_features
    for i, num_layers in enumerate(block_config):
        if i == 3:
            channels.append(num_features + (num_layers // 2) * growth_rate)  # DB4a
        else:
            num_features += num_layers * growth_rate
            channels.append(num_features)  # DB1..DB3 before their transitions
            num_features //= 2
    skips = {"ladder": channels, "dilated8": channels[:1], "32x": []}[architecture]
    stride = {"ladder": 64, "dilated8": 8, "32x": 32}[architecture]
    return {"skip_channels": skips, "output_stride": stride}


def _feature_size(size: int, architecture: str) -> int:
    """Side of the coarsest feature map for an input side, following the layers' rounding."""
    size = (size + 2 * 3 - 7) // 2 + 1   # conv0 7×7 s2 p3
    size = (size + 2 * 1 - 3) // 2 + 1   # pool0 3×3 s2 p1
    pools = {"ladder": 4, "dilated8": 1, "32x": 3}[architecture]  # transitions (+ the DB4 split)
    for _ in range(pools):
        size //= 2
    return size


# --- model --------------------------------------------------------------------------------------

class LadderDenseNet(nn.Module):
    """Ladder-style DenseNet and its Table-1 baselines.

    Args:
        num_classes: classes of the logits.
        growth_rate, block_config, num_init_features, bn_size: the DenseNet (torchvision's meaning);
            small values build a tiny model for tests and CPU demos.
        architecture: ``"ladder"`` (LDN 4×), ``"dilated8"`` (DB3/DB4 dilated 2/4, one transition-up
            with the DB1 skip) or ``"32x"`` (context and classifier on the 1/32 features).
        mode: transition-up join, ``"concat"`` (2017 LDN) or ``"add"`` (later LDN / SwiftNet).
        context: ``"dense"`` (BN-ReLU-1×1, BN-ReLU-3×3 dilation 2) or ``"spp"`` (spatial pyramid pooling).
        context_channels: the context bottleneck width (512 in the paper).
        upsample_channels: f, the width of the context output and of every transition-up (128).
        aux_classifier: auxiliary classifier on the context output (default: all but ``"32x"``).
        memory_efficient: recompute the dense layers' bottlenecks in backward.
        in_channels: image channels.

    Shapes: x [N, in_channels, H, W] → logits [N, num_classes, H, W] in eval; in train
    (logits, aux_logits [N, num_classes, h, w] at the context's resolution, or None).
    """

    def __init__(self, num_classes: int = 19, *, growth_rate: int = 32,
                 block_config: Sequence[int] = (6, 12, 24, 16), num_init_features: int = 64, bn_size: int = 4,
                 architecture: str = "ladder", mode: str = "concat",
                 context: str = "dense", context_channels: int = 512, upsample_channels: int = 128,
                 aux_classifier: Optional[bool] = None, memory_efficient: bool = False, in_channels: int = 3):
        super().__init__()
        layout = _ladder_layout(growth_rate, block_config, num_init_features, architecture)
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if aux_classifier is None:
            aux_classifier = architecture != "32x"
        self.config = dict(num_classes=num_classes, growth_rate=growth_rate, block_config=tuple(block_config),
                           num_init_features=num_init_features, bn_size=bn_size, architecture=architecture,
                           mode=mode, context=context, context_channels=context_channels,
                           upsample_channels=upsample_channels, aux_classifier=aux_classifier,
                           memory_efficient=memory_efficient, in_channels=in_channels)
        self.architecture, self.in_channels = architecture, in_channels
        self.output_stride = layout["output_stride"]
        features, num_features = make_features(
            growth_rate, block_config, num_init_features, bn_size, in_channels,
            dilated=architecture == "dilated8", split_last=architecture == "ladder", final_norm=False,
            memory_efficient=memory_efficient)
        self.features = LadderFeatures(features, len(layout["skip_channels"]))
        if context == "spp":
            self.context = SpatialPyramidPooling(num_features, upsample_channels, context_channels,
                                                 upsample_channels)
        else:
            self.context = ContextBlock(num_features, context_channels, upsample_channels)
        # upsample[0] joins the coarsest skip; the last one reaches 1/4 (the DB1 skip)
        self.upsample = nn.ModuleList(
            LadderUpsample(upsample_channels, skip_channels, upsample_channels, mode=mode)
            for skip_channels in layout["skip_channels"][::-1])
        self.classifier = BNReluConv(upsample_channels, num_classes, bias=True)
        self.aux_classifier = (BNReluConv(upsample_channels, num_classes, bias=True) if aux_classifier
                               else None)
        init_weights(self)

    def check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be an image batch [N, {self.in_channels}, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels ([N, {self.in_channels}, H, W]), "
                             f"got shape {tuple(x.shape)}")
        coarse = [_feature_size(s, self.architecture) for s in x.shape[-2:]]
        if min(coarse) < 1:
            minimum = next(s for s in range(1, 4096) if _feature_size(s, self.architecture) >= 1)
            raise ValueError(f"x of shape {tuple(x.shape)} is smaller than the model's output stride "
                             f"{self.output_stride}: its 1/{self.output_stride} features would be "
                             f"{coarse[0]}×{coarse[1]}; H and W must be at least {minimum}")

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(coarsest features, skips the decoder uses, finest first)."""
        return self.features(x)

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        size = x.shape[-2:]
        features, skips = self.features(x)
        context = self.context(features)
        del features
        x = context
        for up in self.upsample:
            x = up(x, skips.pop())
        logits = self.classifier(x)
        del x
        # The 1/4 logits are small: made NCHW (a no-op unless the model runs channels_last) before the ×4
        # upsampling, so that the full-size result is written NCHW once (upsampling NHWC and then
        # transposing it took 26 + 32 ms instead of 13 ms at 448×1024 on CPU).
        logits = logits.contiguous()
        if logits.device.type == "cpu" and not (torch.is_grad_enabled() and logits.requires_grad):
            # fastladder's kernel: 2.1 / 2.7 ms in float32 / bfloat16 where ATen took 6.5 / 10.4 ms
            # (448×1024, 2 threads; bfloat16 through float32, ATen's own bfloat16 kernel is slower still).
            # Not in training: with its backward it took 1.7× ATen's time.
            logits = upsample_bilinear(logits, size)
        else:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.training:
            aux = self.aux_classifier(context) if self.aux_classifier is not None else None
            return logits, aux
        return logits

    def load_backbone_weights(self, weights: WeightsLike):
        """Loads a torchvision DenseNet checkpoint into ``features`` (its norm5 and classifier are not
        used)."""
        load_densenet_weights(_FeaturesOnly(self.features), weights,
                              ignore=("features.norm5.", "classifier."))


# --- builders -----------------------------------------------------------------------------------

class _FeaturesOnly(nn.Module):
    """The model's ``features`` under their own names: the part a DenseNet checkpoint fills."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features


def _ladder(variant: str, num_classes: int, backbone_weights: Optional[WeightsLike],
            **kwargs) -> LadderDenseNet:
    growth_rate, block_config, num_init_features = DENSENET_CONFIGS[variant]
    kwargs.setdefault("growth_rate", growth_rate)
    kwargs.setdefault("block_config", block_config)
    kwargs.setdefault("num_init_features", num_init_features)
    model = LadderDenseNet(num_classes, **kwargs)
    if backbone_weights is not None:
        model.load_backbone_weights(backbone_weights)
    return model


@register_model
def ladder_densenet121(num_classes: int = 19, backbone_weights: Optional[WeightsLike] = None,
                       **kwargs) -> LadderDenseNet:
    """LDN-121 4× (72.82 mIoU on Cityscapes val at 1024×448 in the paper)."""
    return _ladder("densenet121", num_classes, backbone_weights, **kwargs)


@register_model
def ladder_densenet169(num_classes: int = 19, backbone_weights: Optional[WeightsLike] = None,
                       **kwargs) -> LadderDenseNet:
    """LDN-169 4× (73.72 mIoU at 1024×448, 75.75 at full resolution)."""
    return _ladder("densenet169", num_classes, backbone_weights, **kwargs)


@register_model
def densenet121_32x(num_classes: int = 19, backbone_weights: Optional[WeightsLike] = None,
                    **kwargs) -> LadderDenseNet:
    """Baseline: DenseNet-121 with context block and classifier at 1/32 (62.52 mIoU)."""
    kwargs.setdefault("architecture", "32x")
    return _ladder("densenet121", num_classes, backbone_weights, **kwargs)


@register_model
def dilated8_densenet121(num_classes: int = 19, backbone_weights: Optional[WeightsLike] = None,
                         **kwargs) -> LadderDenseNet:
    """Baseline: DB3/DB4 dilated 2/4 (1/8 features), one transition-up with DB1 to 1/4 (71.56 mIoU)."""
    kwargs.setdefault("architecture", "dilated8")
    return _ladder("densenet121", num_classes, backbone_weights, **kwargs)

"""Unfused pure-torch.nn twins of fastladder's DenseNet modules and segmentation models.

Same constructor arguments and parameter names as fastladder.nn.DenseBlock & co. and
fastladder.models.LadderDenseNet / DenseNet, so a state_dict moves between twin and model as is.
They are the plain way to write these networks: a torch.cat per dense layer (as torchvision does),
BatchNorm and ReLU as separate ops, transition convolution before its pool. Tests compare the
fused models against them; benchmarks use them (eager and compiled) as the baseline.
"""
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.reference.nn import LadderUpsampleReference

__all__ = [
    "BNReluConvReference", "DenseLayerReference", "DenseBlockReference", "TransitionReference",
    "SpatialPyramidPoolingReference", "ContextBlockReference", "DenseNetReference", "LadderDenseNetReference",
    "reference_twin",
]


class BNReluConvReference(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 bias: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=bias)

    def forward(self, x):
        return self.conv(F.relu(self.norm(x)))


class DenseLayerReference(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, dilation: int = 1):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=dilation,
                               dilation=dilation, bias=False)

    def forward(self, x):
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlockReference(nn.ModuleDict):
    def __init__(self, num_layers: int, in_channels: int, growth_rate: int = 32, bn_size: int = 4,
                 dilation: int = 1, memory_efficient: bool = False, split: Optional[int] = None):
        super().__init__()
        self.split = split
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayerReference(in_channels + i * growth_rate, growth_rate, bn_size,
                                                dilation))

    def forward(self, x):
        return self.forward_split(x)[1]

    def forward_split(self, x):
        features, before = [x], None
        for i, layer in enumerate(self.values()):
            if i == self.split:
                before = torch.cat(features, 1)
                features = [F.avg_pool2d(before, 2)]
            features.append(layer(torch.cat(features, 1)))
        return before, torch.cat(features, 1)


class TransitionReference(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(self.conv(self.relu(self.norm(x))))


class SpatialPyramidPoolingReference(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 128, bottleneck_channels: int = 512,
                 level_channels: int = 128, grids: Sequence[int] = (8, 4, 2, 1)):
        super().__init__()
        self.grids = tuple(grids)
        self.bottleneck = BNReluConvReference(in_channels, bottleneck_channels)
        self.levels = nn.ModuleList(BNReluConvReference(bottleneck_channels, level_channels)
                                    for _ in self.grids)
        self.fuse = BNReluConvReference(bottleneck_channels + len(self.grids) * level_channels, out_channels)

    def forward(self, x):
        x = self.bottleneck(x)
        size = x.shape[-2:]
        aspect = size[1] / size[0]
        pyramid = [x]
        for grid, level in zip(self.grids, self.levels):
            pooled = F.adaptive_avg_pool2d(x, (grid, max(1, round(grid * aspect))))
            pyramid.append(F.interpolate(level(pooled), size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(pyramid, 1))


class ContextBlockReference(nn.Module):
    def __init__(self, in_channels: int, bottleneck_channels: int = 512, out_channels: int = 128,
                 dilation: int = 2):
        super().__init__()
        self.reduce = BNReluConvReference(in_channels, bottleneck_channels)
        self.blend = BNReluConvReference(bottleneck_channels, out_channels, kernel_size=3, dilation=dilation)

    def forward(self, x):
        return self.blend(self.reduce(x))


def _features_reference(growth_rate, block_config, num_init_features, bn_size, in_channels, dilated,
                        split_last, final_norm):
    """torchvision's DenseNet.features (and keys), with the ladder/dilated variants. Returns
    (features, channels)."""
    features = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]))
    channels = [num_init_features]
    num_features = num_init_features
    last = len(block_config) - 1
    for i, num_layers in enumerate(block_config):
        dilation = {2: 2, 3: 4}.get(i, 1) if dilated else 1
        block = DenseBlockReference(num_layers, num_features, growth_rate, bn_size, dilation,
                                    split=num_layers // 2 if split_last and i == last else None)
        features.add_module(f"denseblock{i + 1}", block)
        num_features += num_layers * growth_rate
        channels.append(num_features)
        if i != last:
            pool = not (dilated and i + 1 >= 2)
            features.add_module(f"transition{i + 1}",
                                TransitionReference(num_features, num_features // 2, pool))
            num_features //= 2
    if final_norm:
        features.add_module("norm5", nn.BatchNorm2d(num_features))
    return features, num_features


class DenseNetReference(nn.Module):
    """torchvision.models.DenseNet with the same constructor as fastladder.models.DenseNet."""

    def __init__(self, growth_rate: int = 32, block_config=(6, 12, 24, 16), num_init_features: int = 64,
                 bn_size: int = 4, num_classes: int = 1000, memory_efficient: bool = False,
                 dilated: bool = False, in_channels: int = 3):
        super().__init__()
        self.features, num_features = _features_reference(growth_rate, block_config, num_init_features,
                                                          bn_size, in_channels, dilated, False, True)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        out = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class LadderDenseNetReference(nn.Module):
    """The unfused twin of fastladder.models.LadderDenseNet (same constructor, same parameter names)."""

    def __init__(self, num_classes: int = 19, *, growth_rate: int = 32, block_config=(6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, architecture: str = "ladder",
                 mode: str = "concat", context: str = "dense", context_channels: int = 512,
                 upsample_channels: int = 128, aux_classifier: Optional[bool] = None,
                 memory_efficient: bool = False, in_channels: int = 3):
        super().__init__()
        from fastladder.models.ladder_densenet import _ladder_layout
        layout = _ladder_layout(growth_rate, block_config, num_init_features, architecture)
        if aux_classifier is None:
            aux_classifier = architecture != "32x"
        self.architecture = architecture
        self.features, num_features = _features_reference(
            growth_rate, block_config, num_init_features, bn_size, in_channels, architecture == "dilated8",
            architecture == "ladder", False)
        if context == "spp":
            self.context = SpatialPyramidPoolingReference(num_features, upsample_channels, context_channels,
                                                          upsample_channels)
        else:
            self.context = ContextBlockReference(num_features, context_channels, upsample_channels)
        self.upsample = nn.ModuleList(
            LadderUpsampleReference(upsample_channels, skip_channels, upsample_channels, mode=mode)
            for skip_channels in layout["skip_channels"][::-1])
        self.classifier = BNReluConvReference(upsample_channels, num_classes, bias=True)
        self.aux_classifier = (BNReluConvReference(upsample_channels, num_classes, bias=True)
                               if aux_classifier else None)

    def forward(self, x):
        size = x.shape[-2:]
        f = self.features
        x = f.pool0(f.relu0(f.norm0(f.conv0(x))))
        skips = []
        blocks = [m for name, m in f.named_children() if name.startswith("denseblock")]
        for i, block in enumerate(blocks):
            before, x = block.forward_split(x)
            if before is not None:
                skips.append(before)
            if i < len(blocks) - 1:
                skips.append(x)
                x = getattr(f, f"transition{i + 1}")(x)
        skips = skips[:len(self.upsample)] if self.architecture != "dilated8" else skips[:1]
        context = self.context(x)
        x = context
        for up, skip in zip(self.upsample, skips[::-1]):
            x = up(x, skip)
        logits = F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)
        if self.training:
            aux = self.aux_classifier(context) if self.aux_classifier is not None else None
            return logits, aux
        return logits


def reference_twin(model: nn.Module) -> nn.Module:
    """The reference twin of a fastladder model (built from model.config), with model's state_dict loaded.

    It is in model's train/eval mode, on its device and dtype."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("reference_twin needs a fastladder model with a .config, got "
                         f"{type(model).__name__}")
    twins = {"DenseNet": DenseNetReference, "LadderDenseNet": LadderDenseNetReference}
    cls = twins.get(type(model).__name__)
    if cls is None:
        raise ValueError(f"no reference twin for {type(model).__name__}")
    twin = cls(**config)
    twin.load_state_dict(model.state_dict())
    parameter = next(model.parameters())
    return twin.to(device=parameter.device, dtype=parameter.dtype).train(model.training)

"""DenseNet backbones (Huang et al., CVPR 2017) on fastladder's linear-memory dense blocks.

torchvision's architecture and state_dict keys, so a torchvision ImageNet checkpoint loads as is
(old ``norm.1``-style keys are remapped). Optional dilation of blocks 3 and 4 (output stride 8).
"""
import os
import re
from collections import OrderedDict
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.models._checkpoint import read_state_dict
from fastladder.models._registry import register_model
from fastladder.models._state_dict import copy_into, key_problems
from fastladder.nn import DenseBlock, Transition

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "load_densenet_weights",
           "remap_legacy_keys"]

# (growth_rate, block_config, num_init_features), as in torchvision
DENSENET_CONFIGS = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}

WeightsLike = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


# --- blocks -------------------------------------------------------------------------------------

def make_features(growth_rate: int, block_config: Sequence[int], num_init_features: int, bn_size: int,
                  in_channels: int, *, dilated: bool = False, split_last: bool = False,
                  final_norm: bool = True, memory_efficient: bool = False) -> Tuple[nn.Sequential, int]:
    """torchvision's ``DenseNet.features`` (same child names) on fastladder blocks.

    dilated: blocks 3 and 4 use dilation 2 and 4 and transitions 2 and 3 do not pool (stride 8).
    split_last: the last block pools (2×2 average) after half of its layers (ladder DenseNet).
    Returns (features, channels of its output)."""
    if len(block_config) != 4 and (dilated or split_last):
        raise ValueError(f"dilated and split variants need 4 blocks, got block_config={tuple(block_config)}")
    features = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]))
    num_features = num_init_features
    last = len(block_config) - 1
    for i, num_layers in enumerate(block_config):
        dilation = {2: 2, 3: 4}.get(i, 1) if dilated else 1
        block = DenseBlock(num_layers, num_features, growth_rate, bn_size, dilation, memory_efficient,
                           split=num_layers // 2 if split_last and i == last else None)
        features.add_module(f"denseblock{i + 1}", block)
        num_features += num_layers * growth_rate
        if i != last:
            pool = not (dilated and i + 1 >= 2)
            features.add_module(f"transition{i + 1}", Transition(num_features, num_features // 2, pool))
            num_features //= 2
    if final_norm:
        features.add_module("norm5", nn.BatchNorm2d(num_features))
    return features, num_features


def init_weights(module: nn.Module):
    """torchvision's DenseNet initialisation (Kaiming-normal convolutions, BN 1/0, Linear bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                         r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Old torchvision DenseNet checkpoints name ``denselayerM.norm.1.weight``; now
    ``denselayerM.norm1.weight``."""
    remapped = OrderedDict()
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value
    return remapped


def load_densenet_weights(model: nn.Module, weights: WeightsLike, *, ignore: Sequence[str] = ()) -> None:
    """Loads a torchvision-style DenseNet state_dict into ``model`` (whose keys are a subset of it).

    Every key of ``model`` must be present with its shape, except BatchNorm ``num_batches_tracked``
    counters (absent from old checkpoints), and every key of ``weights`` must be one of model's.
    Keys that start with one of ``ignore`` are left out on both sides (e.g. the ImageNet classifier).

    Raises:
        ValueError: listing the missing, unexpected and shape-mismatched keys.
    """
    source = remap_legacy_keys(read_state_dict(weights, what="backbone_weights"))
    source = OrderedDict((k, v) for k, v in source.items() if not any(k.startswith(p) for p in ignore))
    target = OrderedDict((k, v) for k, v in model.state_dict().items()
                         if not any(k.startswith(p) for p in ignore))
    problems = key_problems(source, target, optional=lambda key: key.endswith("num_batches_tracked"))
    if problems:
        raise ValueError(f"backbone_weights do not fit {type(model).__name__}: " + "; ".join(problems))
    copy_into(target, source)


# --- model --------------------------------------------------------------------------------------

class DenseNet(nn.Module):
    """torchvision.models.DenseNet on linear-memory dense blocks.

    Args:
        growth_rate, block_config, num_init_features, bn_size, num_classes: as in torchvision.
        memory_efficient: recompute the dense layers' bottlenecks in backward (see DenseBlock).
        dilated: dilate blocks 3 and 4 (rates 2, 4) instead of pooling before them (stride 8).
        in_channels: image channels.

    Shapes: [N, in_channels, H, W] → logits [N, num_classes];
    :meth:`forward_features` → [N, C, H/32, W/32] (H/8 when dilated), before norm5.
    """

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000,
                 memory_efficient: bool = False, dilated: bool = False, in_channels: int = 3):
        super().__init__()
        self.config = dict(growth_rate=growth_rate, block_config=tuple(block_config),
                           num_init_features=num_init_features, bn_size=bn_size, num_classes=num_classes,
                           memory_efficient=memory_efficient, dilated=dilated, in_channels=in_channels)
        self.in_channels = in_channels
        self.features, self.num_features = make_features(growth_rate, block_config, num_init_features,
                                                         bn_size, in_channels, dilated=dilated,
                                                         memory_efficient=memory_efficient)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        for name, module in self.features.named_children():
            if name == "norm5":
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        x = F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), 1)
        return self.classifier(torch.flatten(x, 1))


# --- builders -----------------------------------------------------------------------------------

def _densenet(variant: str, num_classes: int, backbone_weights: Optional[WeightsLike], **kwargs) -> DenseNet:
    growth_rate, block_config, num_init_features = DENSENET_CONFIGS[variant]
    kwargs.setdefault("growth_rate", growth_rate)
    kwargs.setdefault("block_config", block_config)
    kwargs.setdefault("num_init_features", num_init_features)
    model = DenseNet(num_classes=num_classes, **kwargs)
    if backbone_weights is not None:
        weights = remap_legacy_keys(read_state_dict(backbone_weights, what="backbone_weights"))
        # The ImageNet classifier belongs to the backbone only when the class count matches.
        classifier = weights.get("classifier.weight")
        keep_classifier = classifier is not None and classifier.shape == model.classifier.weight.shape
        load_densenet_weights(model, weights, ignore=() if keep_classifier else ("classifier.",))
    return model


@register_model
def densenet121(num_classes: int = 1000, backbone_weights: Optional[WeightsLike] = None,
                **kwargs) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6-12-24-16)."""
    return _densenet("densenet121", num_classes, backbone_weights, **kwargs)


@register_model
def densenet161(num_classes: int = 1000, backbone_weights: Optional[WeightsLike] = None,
                **kwargs) -> DenseNet:
    """DenseNet-161 (growth 48, blocks 6-12-36-24, 96 initial features)."""
    return _densenet("densenet161", num_classes, backbone_weights, **kwargs)


@register_model
def densenet169(num_classes: int = 1000, backbone_weights: Optional[WeightsLike] = None,
                **kwargs) -> DenseNet:
    """DenseNet-169 (growth 32, blocks 6-12-32-32)."""
    return _densenet("densenet169", num_classes, backbone_weights, **kwargs)


@register_model
def densenet201(num_classes: int = 1000, backbone_weights: Optional[WeightsLike] = None,
                **kwargs) -> DenseNet:
    """DenseNet-201 (growth 32, blocks 6-12-48-32)."""
    return _densenet("densenet201", num_classes, backbone_weights, **kwargs)

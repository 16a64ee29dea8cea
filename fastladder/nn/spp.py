"""Spatial pyramid pooling context module (PSPNet-style, as in the later LDN release and SwiftNet)."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.nn.densenet import BNReluConv

__all__ = ["SpatialPyramidPooling"]


class SpatialPyramidPooling(nn.Module):
    """BN-ReLU-1×1 bottleneck; average pooling to several grids, each BN-ReLU-1×1 and bilinearly
    upsampled back; concatenation with the bottleneck; BN-ReLU-1×1 fuse.

    Grids follow the input's aspect ratio (a grid g pools to g × round(g·W/H) cells) so that cells
    stay roughly square on wide road-driving images.

    Args:
        in_channels: input channels.
        out_channels: output channels (the ladder's f = 128).
        bottleneck_channels: width of the bottleneck.
        level_channels: width of each pyramid level.
        grids: pooled grid heights, coarse levels last.

    Shapes: [N, in_channels, h, w] → [N, out_channels, h, w].
    """

    def __init__(self, in_channels: int, out_channels: int = 128, bottleneck_channels: int = 512,
                 level_channels: int = 128, grids: Sequence[int] = (8, 4, 2, 1)):
        super().__init__()
        self.grids = tuple(grids)
        self.bottleneck = BNReluConv(in_channels, bottleneck_channels)
        self.levels = nn.ModuleList(BNReluConv(bottleneck_channels, level_channels) for _ in self.grids)
        self.fuse = BNReluConv(bottleneck_channels + len(self.grids) * level_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x must be [N, C, h, w], got shape {tuple(x.shape)}")
        x = self.bottleneck(x)
        size = x.shape[-2:]
        aspect = size[1] / size[0]
        pyramid = [x]
        for grid, level in zip(self.grids, self.levels):
            pooled = F.adaptive_avg_pool2d(x, (grid, max(1, round(grid * aspect))))
            pyramid.append(F.interpolate(level(pooled), size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(pyramid, 1))

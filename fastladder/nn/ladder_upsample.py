"""LadderUpsample: the transition-up module of ladder-style DenseNets (Krešo et al., ICCVW 2017)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.ops.upsample import MODES, upsample_concat

__all__ = ["LadderUpsample"]


class LadderUpsample(nn.Module):
    """skip → BN-ReLU-1×1 projection; bilinear upsample of low; concat (or sum); BN-ReLU-3×3 blend.

    Plain nn.BatchNorm2d / nn.Conv2d parameters, named as in
    :class:`fastladder.reference.LadderUpsampleReference`, so state_dicts move between the two.
    The join is fused (no separately upsampled tensor is stored); :func:`fastladder.nn.fuse_for_inference`
    swaps in the inference form, whose blend is one :func:`fastladder.ops.ladder_blend` call with the
    BatchNorm folded into scale/shift.

    Args:
        low_channels: channels of the coarse input (also the width of the skip projection).
        skip_channels: channels of the skip input.
        out_channels: channels of the output (the paper's f = 128).
        mode: ``"concat"`` (the 2017 LDN) or ``"add"`` (the later LDN / SwiftNet).
        skip_projection: project the skip with BN-ReLU-1×1 to low_channels (else it is joined as is;
            in add mode it must then have low_channels channels).

    Shapes: low [N, low_channels, h, w], skip [N, skip_channels, H, W] → [N, out_channels, H, W].
    """

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int = 128, mode: str = "concat",
                 skip_projection: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "add" and not skip_projection and skip_channels != low_channels:
            raise ValueError(f"mode='add' without skip_projection needs skip_channels == low_channels, got "
                             f"{skip_channels} and {low_channels}")
        self.mode = mode
        self.low_channels = low_channels
        if skip_projection:
            self.skip_norm = nn.BatchNorm2d(skip_channels)
            self.skip_conv = nn.Conv2d(skip_channels, low_channels, kernel_size=1, bias=False)
            joined_skip = low_channels
        else:
            self.skip_norm = self.skip_conv = None
            joined_skip = skip_channels
        joined = low_channels + joined_skip if mode == "concat" else joined_skip
        self.blend_norm = nn.BatchNorm2d(joined)
        self.blend_conv = nn.Conv2d(joined, out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if low.dim() != 4 or low.shape[1] != self.low_channels:
            raise ValueError(f"low must be [N, {self.low_channels}, h, w], got shape {tuple(low.shape)}")
        if self.skip_conv is not None:
            skip = self.skip_conv(F.relu(self.skip_norm(skip)))
        joined = upsample_concat(low, skip, mode=self.mode)
        return self.blend_conv(F.relu(self.blend_norm(joined), inplace=True))

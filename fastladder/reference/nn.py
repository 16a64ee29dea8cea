"""Unfused torch.nn twins of fastladder.nn modules, with identical parameter names."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LadderUpsampleReference(nn.Module):
    """The LDN transition-up in plain torch.nn: the twin of :class:`fastladder.nn.LadderUpsample`."""

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int = 128, mode: str = "concat",
                 skip_projection: bool = True):
        super().__init__()
        self.mode = mode
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
        if self.skip_conv is not None:
            skip = self.skip_conv(F.relu(self.skip_norm(skip)))
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        joined = torch.cat([up, skip], dim=1) if self.mode == "concat" else up + skip
        return self.blend_conv(F.relu(self.blend_norm(joined)))

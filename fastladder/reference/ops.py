"""Reference (unfused) versions of the operators in fastladder.ops, in plain torch."""
from typing import Optional

import torch
import torch.nn.functional as F


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, 1, 1)


def upsample_concat(low: torch.Tensor, skip: torch.Tensor, *, mode: str = "concat",
                    scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                    relu: bool = False, align_corners: bool = False) -> torch.Tensor:
    """F.interpolate (bilinear, size=skip's) + cat or add + affine + ReLU, each step materialized."""
    up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=align_corners)
    joined = torch.cat([up, skip], dim=1) if mode == "concat" else up + skip
    if scale is not None and shift is not None:
        joined = torch.addcmul(_per_channel(shift), joined, _per_channel(scale))  # one pass, as F.batch_norm
    elif scale is not None:
        joined = joined * _per_channel(scale)
    elif shift is not None:
        joined = joined + _per_channel(shift)
    return F.relu(joined) if relu else joined


def ladder_blend(low: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, *, mode: str = "concat",
                 scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                 relu: bool = True, align_corners: bool = False) -> torch.Tensor:
    """conv2d(upsample_concat(...), weight, bias, padding=1), unfused."""
    joined = upsample_concat(low, skip, mode=mode, scale=scale, shift=shift, relu=relu,
                             align_corners=align_corners)
    return F.conv2d(joined, weight, bias, padding=1)


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale + shift) per channel."""
    return F.relu(x * _per_channel(scale) + _per_channel(shift))

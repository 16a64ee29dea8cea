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


def bn_relu_conv1x1(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
    """conv2d(bn_relu(x), weight, bias) (then ReLU), the activation rounded to x's dtype first."""
    y = F.conv2d(bn_relu(x, scale, shift), weight, None if bias is None else bias.to(x.dtype))
    return F.relu(y) if relu else y


# Winograd F(m×m, 3×3) (Lavin & Gray, 2016), keyed by the output tile m: the filter, input and output
# transforms G, Bᵀ and Aᵀ. F(4×4) with the interpolation points 0, ±1, ±2, ∞; F(2×2) with 0, ±1, ∞.
_WINOGRAD = {
    4: (((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
    2: (((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
}


def winograd_weight(weight: torch.Tensor, output_tile: int = 4) -> torch.Tensor:
    """[C_out, C_in, 3, 3] → [(m+2)², C_in, C_out]: G g Gᵀ for every filter, in float64, cast back."""
    alpha = output_tile + 2
    g = torch.tensor(_WINOGRAD[output_tile][0], dtype=torch.float64, device=weight.device)
    u = g @ weight.double() @ g.T  # [C_out, C_in, α, α]
    return u.permute(2, 3, 1, 0).reshape(alpha * alpha, weight.shape[1], weight.shape[0]).to(weight.dtype)


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     padding=(1, 1), relu: bool = False) -> torch.Tensor:
    """The Winograd algorithm step by step: α×α patches every m pixels (α = m + 2, from weight's α²
    positions), V = Bᵀ d B, M = Σ_c U ⊙ V, Y = Aᵀ M A, cropped to the output size. In float64 it gives
    the exact convolution; other dtypes compute in float32 (bfloat16: V rounded to bfloat16, as the
    kernel does)."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    tile = 4 if weight.shape[0] == 36 else 2
    alpha = tile + 2
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_h, out_w = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)
    # pad so that every tile's α×α patch exists: rows [-padding, m·tiles + 2 - padding)
    right, bottom = tile * tiles_w + 2 - w - padding[1], tile * tiles_h + 2 - h - padding[0]
    padded = F.pad(x.to(work), (padding[1], right, padding[0], bottom))
    patches = padded.unfold(2, alpha, tile).unfold(3, alpha, tile)  # [N, C, tiles_h, tiles_w, α, α]
    bt = torch.tensor(_WINOGRAD[tile][1], dtype=work, device=x.device)
    at = torch.tensor(_WINOGRAD[tile][2], dtype=work, device=x.device)
    v = (bt @ patches @ bt.T).to(x.dtype).to(work)
    m = torch.einsum("ncyxij,ijck->nkyxij", v, weight.to(work).reshape(alpha, alpha, c, k))
    y = at @ m @ at.T  # [N, K, tiles_h, tiles_w, m, m]
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(n, k, tile * tiles_h, tile * tiles_w)[:, :, :out_h, :out_w]
    if bias is not None:
        y = y + _per_channel(bias.to(work))
    return (F.relu(y) if relu else y).to(x.dtype)

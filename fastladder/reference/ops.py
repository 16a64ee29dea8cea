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


# Winograd F(4×4, 3×3) (Lavin & Gray, 2016) with the interpolation points 0, ±1, ±2, ∞: the filter, input
# and output transforms G, Bᵀ and Aᵀ.
_WINOGRAD_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
               (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_WINOGRAD_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
                (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3] → [36, C_in, C_out]: G g Gᵀ for every filter, in float64, cast back."""
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64, device=weight.device)
    u = g @ weight.double() @ g.T  # [C_out, C_in, 6, 6]
    return u.permute(2, 3, 1, 0).reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype)


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     padding=(1, 1), relu: bool = False) -> torch.Tensor:
    """The Winograd algorithm step by step: 6×6 patches every 4 pixels, V = Bᵀ d B, M = Σ_c U ⊙ V,
    Y = Aᵀ M A, cropped to the output size. x's dtype throughout (float64 gives the exact convolution)."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    out_h, out_w = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    tiles_h, tiles_w = -(-out_h // 4), -(-out_w // 4)
    # pad so that every tile's 6×6 patch exists: rows [-padding, 4·tiles + 2 - padding)
    right, bottom = 4 * tiles_w + 2 - w - padding[1], 4 * tiles_h + 2 - h - padding[0]
    padded = F.pad(x, (padding[1], right, padding[0], bottom))
    patches = padded.unfold(2, 6, 4).unfold(3, 6, 4)  # [N, C, tiles_h, tiles_w, 6, 6]
    bt = torch.tensor(_WINOGRAD_BT, dtype=x.dtype, device=x.device)
    at = torch.tensor(_WINOGRAD_AT, dtype=x.dtype, device=x.device)
    v = bt @ patches @ bt.T
    m = torch.einsum("ncyxij,ijck->nkyxij", v, weight.reshape(6, 6, c, k))
    y = at @ m @ at.T  # [N, K, tiles_h, tiles_w, 4, 4]
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(n, k, 4 * tiles_h, 4 * tiles_w)[:, :, :out_h, :out_w]
    if bias is not None:
        y = y + _per_channel(bias)
    return F.relu(y) if relu else y

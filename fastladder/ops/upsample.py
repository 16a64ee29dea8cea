"""The ladder "transition-up" operators: upsample_concat and ladder_blend.

Both follow F.interpolate(mode="bilinear", size=skip.shape[-2:]) exactly for the upsampling.
Their outputs are channels_last when `skip` is channels_last, NCHW otherwise.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from fastladder import _extension  # noqa: F401  (loads the operators, or explains why not)
from fastladder.ops._layout import autocast_dtype, output_memory_format

__all__ = ["upsample_concat", "upsample_bilinear", "ladder_blend"]

MODES = ("concat", "add")


def upsample_concat(
    low: torch.Tensor,
    skip: torch.Tensor,
    *,
    mode: str = "concat",
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    relu: bool = False,
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinear upsampling of `low` to skip's size, joined with `skip`, then affine and ReLU, in one pass.

    Equals ``act(join(F.interpolate(low, size=skip.shape[-2:], mode="bilinear",
    align_corners=align_corners), skip) * scale + shift)`` with the upsampled tensor never stored.

    Args:
        low (Tensor[N, Cl, h, w]): the coarse features (any h, w: smaller, larger or equal to H, W).
        skip (Tensor[N, Cs, H, W]): the fine features; the output has their size and memory format.
        mode: ``"concat"`` gives ``[up(low), skip]`` with Cl + Cs channels; ``"add"`` gives
            ``up(low) + skip`` and needs Cl == Cs.
        scale, shift (Tensor[C_out], optional): per-channel affine on the joined channels (an
            inference BatchNorm); missing one of the two means 1 or 0.
        relu: apply ReLU after the affine.
        align_corners: as in F.interpolate.

    Returns:
        Tensor[N, C_out, H, W]. Differentiable in low, skip, scale and shift; the backward is
        deterministic (gather-based) on CPU and CUDA.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    scale, shift = _complete_affine(scale, shift)
    cast = autocast_dtype(low, skip)
    if cast is not None:
        low, skip = low.to(cast), skip.to(cast)
        scale = scale.to(cast) if scale is not None else None
        shift = shift.to(cast) if shift is not None else None
    return torch.ops.fastladder.upsample_concat(low, skip, mode, scale, shift, relu, align_corners)


def upsample_bilinear(x: torch.Tensor, size, *, align_corners: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)`` by upsample_concat's
    kernel, with nothing to join.

    On CPU its NCHW path interpolates each source row along x once for all the output rows that read it
    (4 at ×4): the ×4 upsampling of LDN logits (19 channels, 112×256 → 448×1024, 2 threads, build
    machine) took 2.1 ms in float32 and 2.7 ms in bfloat16, against 6.5 ms for F.interpolate and 10.4 ms
    for bfloat16 through float32 (ATen's bfloat16 kernel is slower still). bfloat16 and float16 compute in
    float32 and round once. Its backward (upsample_concat's, gather-based) took 1.7× ATen's forward and
    backward for these shapes, so the models use it for inference only.

    Args:
        x (Tensor[N, C, h, w]).
        size: the output's (H, W).
        align_corners: as in F.interpolate.

    Returns:
        Tensor[N, C, H, W], NCHW-contiguous, x's dtype. Differentiable.
    """
    height, width = (int(v) for v in size)
    return upsample_concat(x, x.new_empty((x.shape[0], 0, height, width)), align_corners=align_corners)


def ladder_blend(
    low: torch.Tensor,
    skip: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    mode: str = "concat",
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    relu: bool = True,
    align_corners: bool = False,
    winograd_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The LDN transition-up blend: ``conv2d(upsample_concat(...), weight, bias, padding=1)``.

    The 3×3 convolution runs in ATen (oneDNN on CPU, cuDNN on CUDA) on the fused result, so the
    separately upsampled tensor and the pre-BN concatenation are never stored.

    Args:
        low (Tensor[N, Cl, h, w]), skip (Tensor[N, Cs, H, W]), mode, scale, shift, relu,
            align_corners: as in :func:`upsample_concat` (here relu defaults to True: BN-ReLU-conv).
        weight (Tensor[C_out, C_join, 3, 3]): C_join = Cl + Cs for concat, Cs for add.
        bias (Tensor[C_out], optional).
        winograd_weight (Tensor[36 or 16, C_join, C_out], optional): :func:`~fastladder.ops.winograd_weight`
            of ``weight``; CPU inference in float32/64 (either form) or bfloat16 (the 16-position F(2×2)
            form) then convolves by :func:`~fastladder.ops.conv3x3_winograd`.

    Returns:
        Tensor[N, C_out, H, W]. Differentiable.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"weight must be a [C_out, C_join, 3, 3] tensor, got shape {tuple(weight.shape)}")
    if low.dim() == 4 and skip.dim() == 4:
        joined_channels = low.shape[1] + skip.shape[1] if mode == "concat" else skip.shape[1]
        if weight.shape[1] != joined_channels:
            raise ValueError(
                f"weight has {weight.shape[1]} input channels but the joined input has {joined_channels} "
                f"(mode={mode!r}, low {tuple(low.shape)}, skip {tuple(skip.shape)})")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"bias must be a [{weight.shape[0]}] tensor, got shape {tuple(bias.shape)}")
    cast = autocast_dtype(low, skip)
    if cast is None and weight.dtype != skip.dtype:
        raise ValueError(f"weight must have the inputs' dtype {skip.dtype}, got {weight.dtype}")
    band_rows = _band_rows(skip, weight.shape[1]) if low.dim() == 4 and skip.dim() == 4 else None
    if band_rows is not None and cast is None and _no_grad_needed(low, skip, weight, bias, scale, shift):
        # conv2d(upsample_concat(...)) in channels_last bands: csrc/ops/ladder_blend.cpp
        scale, shift = _complete_affine(scale, shift)
        return torch.ops.fastladder.ladder_blend_bands(low, skip, weight, bias, mode, scale, shift, relu,
                                                       align_corners, band_rows, winograd_weight)
    joined = upsample_concat(low, skip, mode=mode, scale=scale, shift=shift, relu=relu,
                             align_corners=align_corners)
    return F.conv2d(joined, weight, bias, padding=1)


# CPU inference runs through ladder_blend_bands: the joined input is written channels_last (the
# layout oneDNN convolves fastest, whatever the input layout), and one larger than BAND_BYTES is
# convolved in equal bands of at most that size, so that it is never stored whole (peak memory ≈ the
# output).
BAND_BYTES = 16 * 2**20
MIN_BAND_ROWS = 8


def _band_rows(skip, joined_channels):
    """Rows per band on CPU (all rows: a single band, when the joined input is small), None elsewhere."""
    if skip.device.type != "cpu":
        return None
    height, width = skip.shape[-2:]
    joined_bytes = skip.shape[0] * joined_channels * height * width * skip.element_size()
    bands = max(1, -(-joined_bytes // BAND_BYTES))
    return max(1, min(height, max(MIN_BAND_ROWS, -(-height // bands))))


def _no_grad_needed(*tensors):
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _complete_affine(scale, shift):
    """Fills in the missing half of (scale, shift) so that the kernel sees both or neither."""
    if scale is None and shift is None:
        return None, None
    given = scale if scale is not None else shift
    if scale is None:
        scale = torch.ones_like(given)
    if shift is None:
        shift = torch.zeros_like(given)
    return scale, shift


# --- registration: fake kernel and autograd -------------------------------------------------------

@torch.library.register_fake("fastladder::upsample_concat")
def _upsample_concat_fake(low, skip, mode, scale, shift, relu, align_corners):
    torch._check(low.dim() == 4 and skip.dim() == 4, lambda: "low and skip must be 4-D")
    channels = low.shape[1] + skip.shape[1] if mode == "concat" else skip.shape[1]
    return skip.new_empty((skip.shape[0], channels, skip.shape[2], skip.shape[3])).contiguous(
        memory_format=output_memory_format(skip))


@torch.library.register_fake("fastladder::upsample_concat_rows")
def _upsample_concat_rows_fake(low, skip, mode, scale, shift, relu, align_corners, row_begin, row_count,
                               channels_last):
    channels = low.shape[1] + skip.shape[1] if mode == "concat" else skip.shape[1]
    return skip.new_empty((skip.shape[0], channels, row_count, skip.shape[3])).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.library.register_fake("fastladder::ladder_blend_bands")
def _ladder_blend_bands_fake(low, skip, weight, bias, mode, scale, shift, relu, align_corners, band_rows,
                             winograd_weight=None):
    return skip.new_empty((skip.shape[0], weight.shape[0], skip.shape[2], skip.shape[3])).contiguous(
        memory_format=output_memory_format(skip))


@torch.library.register_fake("fastladder::upsample_concat_backward")
def _upsample_concat_backward_fake(grad_out, low, skip, mode, scale, shift, relu, align_corners,
                                   need_affine_grad):
    memory_format = output_memory_format(skip)
    channels = grad_out.shape[1] if need_affine_grad else 0
    return (
        low.new_empty(low.shape).contiguous(memory_format=memory_format),
        skip.new_empty(skip.shape).contiguous(memory_format=memory_format),
        low.new_empty((channels,)),
        low.new_empty((channels,)),
    )


def _upsample_concat_setup_context(ctx, inputs, output):
    low, skip, mode, scale, shift, relu, align_corners = inputs
    ctx.save_for_backward(low, skip, scale, shift)
    ctx.mode, ctx.relu, ctx.align_corners = mode, relu, align_corners


def _upsample_concat_backward(ctx, grad_out):
    low, skip, scale, shift = ctx.saved_tensors
    need_affine_grad = scale is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
    grad_low, grad_skip, grad_scale, grad_shift = torch.ops.fastladder.upsample_concat_backward(
        grad_out, low, skip, ctx.mode, scale, shift, ctx.relu, ctx.align_corners, need_affine_grad)
    if not need_affine_grad:
        grad_scale = grad_shift = None
    return grad_low, grad_skip, None, grad_scale, grad_shift, None, None


torch.library.register_autograd(
    "fastladder::upsample_concat", _upsample_concat_backward, setup_context=_upsample_concat_setup_context)

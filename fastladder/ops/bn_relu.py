"""bn_relu: fused inference BatchNorm + ReLU, ``max(x * scale[c] + shift[c], 0)``."""
from typing import Optional

import torch

from fastladder import _extension  # noqa: F401  (loads the operators, or explains why not)
from fastladder.ops._layout import autocast_dtype, channels_last_slice_format

__all__ = ["bn_relu", "bn_relu_conv1x1", "fold_batch_norm"]


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(x * scale[None, :, None, None] + shift[None, :, None, None])`` in one pass.

    x is read in place when it is NCHW, channels_last, or a channel slice of an NCHW or a
    channels_last buffer (the DenseNet concatenation buffer's prefix); any other layout is copied
    first.

    Args:
        x (Tensor[N, C, H, W]): floating point.
        scale, shift (Tensor[C]): x's dtype and device; see :func:`fold_batch_norm`.
        out (Tensor, optional): written in place and returned (not differentiable).

    Returns:
        Tensor[N, C, H, W], channels_last if x is channels_last or a slice of a channels_last
        buffer, else NCHW. Differentiable in x, scale and shift.
    """
    cast = autocast_dtype(x)
    if cast is not None:
        x, scale, shift = x.to(cast), scale.to(cast), shift.to(cast)
    if out is None:
        return torch.ops.fastladder.bn_relu(x, scale, shift)
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or shift.requires_grad):
        raise RuntimeError("bn_relu(out=...) does not support automatic differentiation; "
                           "call it without out= or under torch.no_grad()")
    return torch.ops.fastladder.bn_relu.out(x, scale, shift, out=out)


def bn_relu_conv1x1(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, *, relu: bool = False) -> torch.Tensor:
    """``conv2d(bn_relu(x, scale, shift), weight, bias)`` (then ReLU) for a 1×1 filter, for CPU inference.

    In bfloat16 it runs fused: blocks of 12 pixels go through bn_relu's loop into a buffer that stays
    in the core's cache and are multiplied with the filter on AVX512_BF16 dot products (float32 sums,
    bias and ReLU, one rounding), so the activation, as wide as a dense block's whole prefix, is never
    written out and read back. On the 2-core build machine, for LDN-121's dense layers (a channel slice
    of the block's channels_last buffer, 128 output channels), it took 0.74–0.94× the time of bn_relu
    followed by oneDNN's convolution, with the same bits. It is fast where
    :func:`~fastladder.ops.fast_bfloat16` (the CPU has AVX512_BF16), exact but slow elsewhere. Other dtypes
    run bn_relu, then ATen's convolution.

    Args:
        x (Tensor[N, C, H, W]): CPU; read in place when channels_last or a channel slice of a channels_last
            buffer (a DenseNet prefix).
        scale, shift (Tensor[C]): as for :func:`bn_relu`.
        weight (Tensor[C_out, C, 1, 1]): x's dtype.
        bias (Tensor[C_out], optional).
        relu: apply ReLU to the result.

    Returns:
        Tensor[N, C_out, H, W] in bn_relu's layout (channels_last for channels_last x or a slice of it).
        Inference only: not differentiable.
    """
    return torch.ops.fastladder.bn_relu_conv1x1(x, scale, shift, weight, bias, relu)


def fold_batch_norm(norm: torch.nn.BatchNorm2d):
    """(scale, shift) with ``norm(x) == x * scale + shift`` in eval mode, from running statistics."""
    if norm.running_var is None or norm.running_mean is None:
        raise ValueError("fold_batch_norm needs a BatchNorm with running statistics "
                         "(track_running_stats=True)")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


@torch.library.register_fake("fastladder::bn_relu")
def _bn_relu_fake(x, scale, shift):
    torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
    return x.new_empty(x.shape).contiguous(memory_format=channels_last_slice_format(x))


@torch.library.register_fake("fastladder::bn_relu_conv1x1")
def _bn_relu_conv1x1_fake(x, scale, shift, weight, bias, relu):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "x and weight must be 4-D")
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty(shape).contiguous(memory_format=channels_last_slice_format(x))


@torch.library.register_fake("fastladder::bn_relu_backward")
def _bn_relu_backward_fake(grad_out, x, scale, shift, need_affine_grad):
    channels = x.shape[1] if need_affine_grad else 0
    return (x.new_empty(x.shape).contiguous(memory_format=channels_last_slice_format(x)),
            x.new_empty((channels,)), x.new_empty((channels,)))


def _bn_relu_setup_context(ctx, inputs, output):
    x, scale, shift = inputs
    ctx.save_for_backward(x, scale, shift)


def _bn_relu_backward(ctx, grad_out):
    x, scale, shift = ctx.saved_tensors
    need_affine_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    grad_x, grad_scale, grad_shift = torch.ops.fastladder.bn_relu_backward(grad_out, x, scale, shift,
                                                                            need_affine_grad)
    if not need_affine_grad:
        return grad_x, None, None
    return grad_x, grad_scale, grad_shift


torch.library.register_autograd("fastladder::bn_relu", _bn_relu_backward,
                                setup_context=_bn_relu_setup_context)

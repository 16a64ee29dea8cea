"""DenseNet blocks with linear-memory concatenation (Pleiss et al., "Memory-Efficient Implementation
of DenseNets", 2017), with torchvision's architecture and state_dict keys.

A :class:`DenseBlock` owns one feature buffer ``[N, C0 + L·k, H, W]``. Layer ``i`` reads the buffer's
prefix ``[:, :C0 + i·k]`` (a strided view, never a copy) and writes only its ``k`` new channels into
its own slice, so a block copies O(L) bytes instead of the O(L²) of a ``torch.cat`` per layer.

Autograd cannot follow in-place writes into a tensor that earlier layers have read, so with
gradients the block runs as a chain of custom autograd Functions that share the buffer and a
gradient buffer of the same shape (the "shared storage" of Pleiss et al.): layer ``i``'s backward
reads the complete gradient of its ``k`` channels from the gradient buffer (all later layers have
added theirs by then: a token tensor passed from layer to layer orders the backward calls) and
adds the gradient of its prefix to it.

``memory_efficient=True`` stores per layer only the batch mean and inverse std of its two
BatchNorms; backward recomputes BN-ReLU-1×1-BN-ReLU from the buffer with those statistics. So the
running statistics are updated once per forward (``torch.utils.checkpoint`` re-runs the BatchNorm
in train mode and updates them twice) and the recomputation reproduces the forward bit for bit.
"""
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from fastladder.ops._layout import autocast_dtype
from fastladder.ops.bn_relu import bn_relu

__all__ = ["DenseLayer", "DenseBlock", "Transition", "BNReluConv"]


# --- BatchNorm pieces shared by the fused paths -------------------------------------------------

def _uses_batch_stats(norm: nn.BatchNorm2d) -> bool:
    """What nn.BatchNorm2d.forward decides: batch statistics in training or without running ones."""
    return norm.training or norm.running_mean is None


# The attribute that marks a plain BatchNorm2d of a fused DenseBlock as synchronized (its value: the
# process group, None for the default one). DDP refuses nn.SyncBatchNorm modules on CPU, but the fused
# blocks synchronize by themselves on any backend: wrap_model(sync_bn=True) on CPU marks them instead.
SYNC_GROUP_ATTRIBUTE = "fastladder_sync_group"


def synchronize_batch_norm(norm: nn.BatchNorm2d, process_group=None):
    """Marks a BatchNorm of a fused DenseBlock to normalize with the process group's batch statistics."""
    setattr(norm, SYNC_GROUP_ATTRIBUTE, process_group)


def _sync_group(norm: nn.BatchNorm2d):
    """The process group whose batch statistics this BatchNorm normalizes with, or None.

    A SyncBatchNorm (what ``wrap_model(sync_bn=True)`` / ``--sync-bn`` converts every BatchNorm to on
    CUDA, those of the fused dense blocks included), or a BatchNorm marked by synchronize_batch_norm,
    in training, with a process group of several processes."""
    if isinstance(norm, nn.SyncBatchNorm):
        group = norm.process_group
    elif hasattr(norm, SYNC_GROUP_ATTRIBUTE):
        group = getattr(norm, SYNC_GROUP_ATTRIBUTE)
    else:
        return None
    if not (_uses_batch_stats(norm) and norm.training and dist.is_available() and dist.is_initialized()):
        return None
    group = group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _synchronized_var_mean(x: torch.Tensor, group) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(var, mean, count) of x [N, C, H, W] per channel over the whole process group's batch (count:
    a 0-d tensor, so that nothing waits for the device).

    Every process's (count, mean, biased var) is gathered and combined exactly (Chan et al.: the
    group's M2 is the sum of the M2s plus count·(mean - group mean)²), in float32 at least; per-process
    batches may differ in size."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    var, mean = torch.var_mean(x.to(dtype) if x.dtype != dtype else x, dim=(0, 2, 3), correction=0)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    local = torch.cat([mean.new_full((1,), float(count)), mean, var])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    stats = torch.stack(gathered)  # [processes, 1 + 2C]
    channels = x.shape[1]
    counts, means, variances = stats[:, :1], stats[:, 1:1 + channels], stats[:, 1 + channels:]
    total = counts.sum()
    group_mean = (counts * means).sum(0) / total
    m2 = (counts * variances).sum(0) + (counts * (means - group_mean).square()).sum(0)
    return m2 / total, group_mean, total


def _normalization(norm: nn.BatchNorm2d, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean [C], invstd [C]) that this BatchNorm normalizes x [N, C, H, W] with right now.

    In training the batch statistics, and the running statistics are updated here, exactly as
    nn.BatchNorm2d.forward does (momentum, or the cumulative average when momentum is None). A
    SyncBatchNorm in a process group of several processes uses the statistics of the whole group's
    batch, as nn.SyncBatchNorm does (running variance unbiased by the group's count)."""
    if not _uses_batch_stats(norm):
        return norm.running_mean, torch.rsqrt(norm.running_var + norm.eps)
    group = _sync_group(norm)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if group is not None:
        var, mean, count = _synchronized_var_mean(x, group)  # count: the group's, a tensor
    elif count <= 1:
        raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got input shape "
                         f"{tuple(x.shape)}")
    elif x.dtype in (torch.float16, torch.bfloat16):
        # Statistics of low-precision activations accumulate in float32 (as ATen's BatchNorm does),
        # without a float32 copy of x.
        mean = torch.sum(x, dim=(0, 2, 3), dtype=torch.float32) / count
        mean_square = torch.linalg.vector_norm(x, dim=(0, 2, 3), dtype=torch.float32).square_() / count
        var = (mean_square - mean * mean).clamp_min_(0)
    else:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    if norm.training and norm.track_running_stats and norm.running_mean is not None:
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        if group is None:
            norm.running_var.mul_(1 - momentum).add_(var, alpha=momentum * count / (count - 1))
        else:
            unbiased = var * (count / (count - 1))
            norm.running_var.mul_(1 - momentum).add_(unbiased.to(norm.running_var.dtype), alpha=momentum)
    return mean, torch.rsqrt(var + norm.eps)


def _affine(weight, bias, mean, invstd):
    """(scale, shift) with ``(x - mean) * invstd * weight + bias == x * scale + shift``."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _affine_as(weight, bias, mean, invstd, dtype):
    scale, shift = _affine(weight, bias, mean, invstd)
    return scale.to(dtype), shift.to(dtype)


def _needs_autograd(x: torch.Tensor, params) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad
                                        or any(p is not None and p.requires_grad for p in params))


def _check_input(name: str, x: torch.Tensor, channels: int):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} expects x of shape [N, {channels}, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects x with {channels} channels ([N, {channels}, H, W]), got shape "
                         f"{tuple(x.shape)}")


# --- modules ------------------------------------------------------------------------------------

class BNReluConv(nn.Module):
    """Pre-activation unit BN-ReLU-conv (DenseNet style).

    Parameters ``norm`` (BatchNorm2d) and ``conv`` (Conv2d, padding = dilation·(k-1)/2).
    Shapes: [N, in_channels, H, W] → [N, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 bias: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.norm(x), inplace=True))


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: BN-ReLU-1×1 (→ bn_size·k) BN-ReLU-3×3 (→ k), same parameter names.

    Standalone, ``forward(x)`` maps the concatenated input [N, in_channels, H, W] to the k new
    channels [N, growth_rate, H, W]. Inside a :class:`DenseBlock` the block drives the layer's
    parameters directly (the layer then reads a prefix of the block's buffer).

    Args:
        in_channels: channels of the concatenated input (C0 + i·k for layer i of a block).
        growth_rate: k, the channels this layer adds.
        bn_size: bottleneck width factor (bottleneck = bn_size·k channels).
        dilation: dilation (and padding) of the 3×3 convolution.
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, dilation: int = 1):
        super().__init__()
        self.in_channels, self.growth_rate, self.dilation = in_channels, growth_rate, dilation
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=dilation,
                               dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.in_channels)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))

    def parameters_in_order(self):
        """(norm1.weight, norm1.bias, conv1.weight, norm2.weight, norm2.bias, conv2.weight)."""
        return (self.norm1.weight, self.norm1.bias, self.conv1.weight, self.norm2.weight, self.norm2.bias,
                self.conv2.weight)


def _is_channels_last(x: torch.Tensor) -> bool:
    """NHWC order in memory (dense, or a channel slice of a dense channels_last buffer)."""
    strides = x.stride()
    return (x.dim() == 4 and x.shape[1] > 1 and strides[1] == 1 and strides[3] >= x.shape[1]
            and not x.is_contiguous())


def _layer_forward(layer: DenseLayer, prefix: torch.Tensor, keep: bool):
    """One layer as the autograd path computes it (no autograd recording).

    Returns (new features [N, k, H, W], (mean1, invstd1, mean2, invstd2), intermediates) with
    intermediates = (relu1 output, conv1 output, relu2 output) when keep, else None."""
    dtype = prefix.dtype  # the buffer's: under autocast the low-precision type, parameters are cast to it
    mean1, invstd1 = _normalization(layer.norm1, prefix)
    act1 = bn_relu(prefix, *_affine_as(layer.norm1.weight, layer.norm1.bias, mean1, invstd1, dtype))
    hidden = F.conv2d(act1, layer.conv1.weight.to(dtype))
    mean2, invstd2 = _normalization(layer.norm2, hidden)
    act2 = bn_relu(hidden, *_affine_as(layer.norm2.weight, layer.norm2.bias, mean2, invstd2, dtype))
    new = F.conv2d(act2, layer.conv2.weight.to(dtype), padding=layer.dilation, dilation=layer.dilation)
    return new, (mean1, invstd1, mean2, invstd2), ((act1, hidden, act2) if keep else None)


class _BlockState:
    """What the Functions of one block forward share: the feature buffer and, in backward, the gradient
    buffer."""

    def __init__(self, buffer, layers, offsets, keep):
        self.buffer = buffer  # never handed out: the block's output is a separate alias (no reference cycle)
        self.grad_buffer = None
        self.layers = layers
        self.offsets = offsets
        self.keep = keep
        self.version = None


class _BlockEnter(torch.autograd.Function):
    """Copies the block input into the buffer's first C0 channels; returns the first token."""

    @staticmethod
    def forward(ctx, state, x):
        ctx.state, ctx.channels = state, x.shape[1]
        state.buffer[:, :x.shape[1]].copy_(x)
        return x.new_empty(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_token):
        state = ctx.state
        grad_x = state.grad_buffer[:, :ctx.channels].contiguous()
        state.grad_buffer = None  # all layers are done: release it before the stem's backward runs
        return None, grad_x


def _batch_norm_backward(norm: nn.BatchNorm2d, grad: torch.Tensor, x: torch.Tensor, weight, mean, invstd,
                         use_batch_stats: bool, mask):
    """(grad x, grad weight, grad bias) of a BatchNorm that normalized x with (mean, invstd).

    Synchronized (a SyncBatchNorm in a process group, see _sync_group): the input gradient goes
    through the group's statistics, so it needs the group's sums of grad and grad·(x - mean), as
    nn.SyncBatchNorm's backward; the weight and bias gradients stay this process's (DDP averages them)."""
    group = _sync_group(norm) if use_batch_stats else None
    if group is None:
        return torch.ops.aten.native_batch_norm_backward(grad, x, weight, norm.running_mean, norm.running_var,
                                                         mean, invstd, use_batch_stats, norm.eps, mask)
    shape = (1, -1, 1, 1)
    dtype = mean.dtype
    grad_acc, x_acc = grad.to(dtype), x.to(dtype)
    xmu = x_acc - mean.view(shape)
    sum_dy = grad_acc.sum(dim=(0, 2, 3))
    sum_dy_xmu = (grad_acc * xmu).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    local = torch.cat([sum_dy, sum_dy_xmu, sum_dy.new_full((1,), float(count))])
    total = local.clone()
    dist.all_reduce(total, group=group)
    channels = x.shape[1]
    mean_dy = total[:channels] / total[-1]
    mean_dy_xmu = total[channels:2 * channels] / total[-1]
    scale = invstd if weight is None else invstd * weight.to(dtype)
    grad_x = grad_acc - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)
    grad_x = grad_x * scale.view(shape)
    grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if mask[1] and weight is not None else None
    grad_bias = sum_dy.to(weight.dtype) if mask[2] and weight is not None else None
    return grad_x.to(x.dtype), grad_weight, grad_bias


class _DenseLayerFunction(torch.autograd.Function):
    """Layer i of a block: reads the buffer prefix, writes its k channels; backward as described above."""

    @staticmethod
    def forward(ctx, state, index, token, weight1, bias1, conv1, weight2, bias2, conv2):
        layer = state.layers[index]
        start, stop = state.offsets[index], state.offsets[index + 1]
        prefix = state.buffer[:, :start]
        new, stats, kept = _layer_forward(layer, prefix, state.keep)
        state.buffer[:, start:stop].copy_(new)
        ctx.state, ctx.index = state, index
        ctx.use_batch_stats = (_uses_batch_stats(layer.norm1), _uses_batch_stats(layer.norm2))
        # Parameters go through save_for_backward so that an in-place change before backward is caught.
        ctx.save_for_backward(weight1, bias1, conv1, weight2, bias2, conv2, *stats, *(kept or ()))
        return token.new_empty(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_token):
        state, index = ctx.state, ctx.index
        layer = state.layers[index]
        saved = ctx.saved_tensors
        weight1, bias1, conv1, weight2, bias2, conv2, mean1, invstd1, mean2, invstd2 = saved[:10]
        start, stop = state.offsets[index], state.offsets[index + 1]
        if state.buffer._version != state.version:
            raise RuntimeError("DenseBlock: the block's output was modified in place before backward; the "
                               "backward pass needs it unchanged (use out-of-place ops on the block output)")
        prefix = state.buffer[:, :start]
        if len(saved) > 10:
            act1, hidden, act2 = saved[10:]
        else:  # recompute from the saved statistics: the same kernels on the same data as in forward
            dtype = prefix.dtype
            act1 = bn_relu(prefix, *_affine_as(weight1, bias1, mean1, invstd1, dtype))
            hidden = F.conv2d(act1, conv1.to(dtype))
            act2 = bn_relu(hidden, *_affine_as(weight2, bias2, mean2, invstd2, dtype))
        needs = ctx.needs_input_grad
        # needs_input_grad: (state, index, token, weight1, bias1, conv1, weight2, bias2, conv2)
        grad_new = state.grad_buffer[:, start:stop]
        dilation = layer.dilation
        grad_act2, grad_conv2, _ = torch.ops.aten.convolution_backward(
            grad_new, act2, conv2.to(act2.dtype), None, [1, 1], [dilation, dilation], [dilation, dilation],
            False, [0, 0], 1, [True, needs[8], False])
        grad_act2 = torch.ops.aten.threshold_backward(grad_act2, act2, 0)
        del act2
        grad_hidden, grad_weight2, grad_bias2 = _batch_norm_backward(
            layer.norm2, grad_act2, hidden, weight2, mean2, invstd2, ctx.use_batch_stats[1],
            [True, needs[6], needs[7]])
        del grad_act2, hidden
        grad_act1, grad_conv1, _ = torch.ops.aten.convolution_backward(
            grad_hidden, act1, conv1.to(act1.dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [True, needs[5], False])
        grad_act1 = torch.ops.aten.threshold_backward(grad_act1, act1, 0)
        del act1, grad_hidden
        grad_prefix, grad_weight1, grad_bias1 = _batch_norm_backward(
            layer.norm1, grad_act1, prefix, weight1, mean1, invstd1, ctx.use_batch_stats[0],
            [True, needs[3], needs[4]])
        del grad_act1
        state.grad_buffer[:, :start].add_(grad_prefix)
        # (under autocast the convolution weight gradients come in the activations' dtype)
        return (None, None, grad_token, grad_weight1 if needs[3] else None, grad_bias1 if needs[4] else None,
                grad_conv1.to(conv1.dtype) if needs[5] else None, grad_weight2 if needs[6] else None,
                grad_bias2 if needs[7] else None, grad_conv2.to(conv2.dtype) if needs[8] else None)


class _BlockExit(torch.autograd.Function):
    """Returns the filled buffer as the block output; its backward seeds the gradient buffer."""

    @staticmethod
    def forward(ctx, state, token):
        ctx.state = state
        state.version = state.buffer._version
        # An alias, not state.buffer itself: the output holds this node, which holds state; the
        # output object must not be referenced from state, or the graph would be a reference cycle.
        return state.buffer.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        state = ctx.state
        state.grad_buffer = torch.empty_like(state.buffer, memory_format=torch.contiguous_format)
        state.grad_buffer.copy_(grad_output)
        return None, grad_output.new_empty(0)


class DenseBlock(nn.ModuleDict):
    """torchvision's _DenseBlock (children ``denselayer1`` … ``denselayerL``) on one shared buffer.

    Args:
        num_layers: L.
        in_channels: C0, channels of the block input.
        growth_rate: k.
        bn_size: bottleneck width factor.
        dilation: dilation of every layer's 3×3 convolution.
        memory_efficient: in training (or whenever gradients are recorded), recompute each layer's
            BN-ReLU-1×1-BN-ReLU in backward from saved batch statistics instead of storing it.
        split: if given, a 2×2 average pool of all features so far follows layer ``split`` (the
            ladder DenseNet's DB4a / DB4b halves); layers after it run at half the resolution.

    Shapes: [N, C0, H, W] → [N, C0 + L·k, H, W]; with split, a pair (features before the pool
    [N, C0 + split·k, H, W], output [N, C0 + L·k, ⌊H/2⌋, ⌊W/2⌋]).

    :func:`fastladder.nn.fuse_for_inference` swaps in the inference form (BatchNorms folded once).
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int = 32, bn_size: int = 4,
                 dilation: int = 1, memory_efficient: bool = False, split: Optional[int] = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if split is not None and not 0 < split < num_layers:
            raise ValueError(f"split must lie in 1..num_layers-1 = 1..{num_layers - 1}, got {split}")
        self.in_channels, self.growth_rate, self.num_layers = in_channels, growth_rate, num_layers
        self.memory_efficient, self.split = memory_efficient, split
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, dilation))

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.num_layers * self.growth_rate

    def forward(self, x: torch.Tensor):
        """The block output; with ``split``, (features before the pool, block output)."""
        _check_input(type(self).__name__, x, self.in_channels)
        layers = list(self.values())
        if self.split is None:
            return self._run(layers, x)
        before = self._run(layers[:self.split], x)
        return before, self._run(layers[self.split:], F.avg_pool2d(before, 2))

    def _run(self, layers: List[DenseLayer], x: torch.Tensor) -> torch.Tensor:
        """Runs consecutive layers on one buffer whose first channels are x."""
        channels = x.shape[1]
        offsets = [channels + i * self.growth_rate for i in range(len(layers) + 1)]
        dtype = autocast_dtype(x) or x.dtype
        # The buffer follows the input's layout, so channels_last models stay channels_last.
        layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        buffer = torch.empty((x.shape[0], offsets[-1], x.shape[2], x.shape[3]), dtype=dtype, device=x.device,
                             memory_format=layout)
        params = [p for layer in layers for p in layer.parameters_in_order()]
        if _needs_autograd(x, params):
            state = _BlockState(buffer, layers, offsets, keep=not self.memory_efficient)
            token = _BlockEnter.apply(state, x)
            for i, layer in enumerate(layers):
                token = _DenseLayerFunction.apply(state, i, token, *layer.parameters_in_order())
            return _BlockExit.apply(state, token)
        with torch.no_grad():  # nothing to record: the layers run as modules (their hooks fire)
            buffer[:, :channels].copy_(x)
            for i, layer in enumerate(layers):
                buffer[:, offsets[i]:offsets[i + 1]].copy_(layer(buffer[:, :offsets[i]]))
        return buffer


class Transition(nn.Module):
    """torchvision's _Transition: BN-ReLU-1×1 (→ out_channels), then 2×2 average pool (optional).

    The pool runs before the 1×1 convolution: both are linear, so they commute (exactly, up to
    rounding), and the convolution then sees a quarter of the pixels.
    Shapes: [N, in_channels, H, W] → [N, out_channels, ⌊H/2⌋, ⌊W/2⌋] (or H, W without pool).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.in_channels)
        return self.conv(self.pool(self.relu(self.norm(x))))

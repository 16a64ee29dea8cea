"""Inference modules with every BatchNorm folded once, and the conversion that swaps them in.

:func:`fuse_for_inference` returns a copy of an eval-mode model in which each training block
(:class:`~fastladder.nn.BNReluConv`, :class:`~fastladder.nn.DenseLayer`, :class:`~fastladder.nn.DenseBlock`,
:class:`~fastladder.nn.Transition`, :class:`~fastladder.nn.LadderUpsample`, and Conv2d → BatchNorm2d
(→ ReLU) runs of an nn.Sequential) is replaced by its ``Folded*`` counterpart under the same name. The
folded modules hold the BatchNorms as per-channel (scale, shift) buffers, or fold them into the
neighbouring convolution, computed from the running statistics at conversion time, so no forward
recomputes them. They run the fused operators (:func:`fastladder.ops.bn_relu`,
:func:`fastladder.ops.ladder_blend`) and, on CPU, oneDNN convolutions with the ReLU as a post-op; their
3×3 convolutions (stride and dilation 1) also hold the filter in Winograd form (``*_winograd`` buffers,
not in the state_dict: F(4×4, 3×3), 4× the filter's size, in float32; F(2×2, 3×3), 16/9 of it, after a
cast to bfloat16) and run by :func:`fastladder.ops.conv3x3_winograd` on CPU in float32, and in bfloat16
on CPUs with AVX512_BF16, where the BN-ReLU-1×1 steps also run fused
(:func:`fastladder.ops.bn_relu_conv1x1`).

The converted model is for inference only: its buffers are not trained, and it does not follow later
changes to the original's weights. Its state_dict is not the training model's.
"""
import copy
import sys
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from fastladder.nn.densenet import BNReluConv, DenseBlock, DenseLayer, Transition
from fastladder.nn.ladder_upsample import LadderUpsample
from fastladder.ops._cpu import fast_bfloat16
from fastladder.ops.bn_relu import bn_relu, bn_relu_conv1x1 as fused_bn_relu_conv1x1, fold_batch_norm
from fastladder.ops.upsample import ladder_blend
from fastladder.ops.winograd import conv3x3_winograd, winograd_weight

__all__ = ["fuse_for_inference", "is_fused", "FoldedConv2d", "FoldedBNReluConv", "FoldedDenseLayer",
           "FoldedDenseBlock", "FoldedTransition", "FoldedLadderUpsample"]

# BN-ReLU-1×1 runs in bands of rows so that its BN-ReLU temporary (as wide as the whole dense-block
# prefix) never exceeds this many bytes; the 1×1 convolution is pointwise, so banding is exact.
BAND_BYTES = 4 << 20

# A dense layer whose bottleneck (bn_size·k channels, full size) exceeds this many bytes no longer keeps it
# in cache between the 1×1 that writes it and the 3×3 that reads it (DB1 at 1024×2048: 67 MB); such a
# layer runs in bands of LAYER_BAND_ROWS · dilation output rows, 1×1 and 3×3 together (15-28% faster per
# DB1 layer at 1024×2048 on 2 threads; the same or slower for bottlenecks of ~16 MB).
LAYER_BAND_BYTES = 32 << 20
LAYER_BAND_ROWS = 16



class _ReferenceProbe(nn.Module):
    def forward(self, low, skip):
        return sys.getrefcount(skip)


# References to a temporary passed as ``module(x, expression)``, seen from inside forward (the caller's
# stack, Module.__call__'s argument tuples, forward's parameter, getrefcount's argument): measured once,
# since it depends on the Python and torch versions. One more means that somebody else holds the tensor.
_HANDED_OVER_REFERENCES = _ReferenceProbe()(None, torch.empty(0))


# --- kernels ------------------------------------------------------------------------------------

def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=(1, 1),
           padding=(0, 0), dilation=(1, 1), groups: int = 1, relu: bool = False) -> torch.Tensor:
    """conv2d (then ReLU).

    On CPU without autograd this calls oneDNN directly: the ReLU becomes a post-op of the convolution
    (no extra pass), and small batch-1 inputs (the 1/32 and 1/64 blocks), for which ATen picks its
    slow im2col path, also get oneDNN."""
    if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and weight.dtype == x.dtype
            and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), list(stride),
                                                       list(dilation), groups, "relu" if relu else "none", [],
                                                       "")
    out = torch.nn.functional.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                     groups=groups)
    return out.relu_() if relu else out


def conv3x3(x: torch.Tensor, weight: torch.Tensor, transformed: Optional[torch.Tensor],
            bias: Optional[torch.Tensor] = None, padding=(1, 1), dilation: int = 1) -> torch.Tensor:
    """A 3×3 conv2d (stride 1): by Winograd when :func:`_use_winograd` says so (0.44–0.57× oneDNN's time
    in float32, 0.57–0.70× in bfloat16, for the DenseNet and ladder shapes on the build machine), else
    :func:`conv2d`."""
    if _use_winograd(x, transformed):
        return conv3x3_winograd(x, transformed, bias, padding=padding)
    return conv2d(x, weight, bias, padding=padding, dilation=(dilation, dilation))


def _cpu_inference(x: torch.Tensor, *dtypes: torch.dtype) -> bool:
    """CPU inference (no autograd) in one of ``dtypes``, bfloat16 only where the CPU has AVX512_BF16
    (fastladder's bfloat16 kernels are slower than oneDNN's without it)."""
    return (x.device.type == "cpu" and x.dtype in dtypes and not torch.is_grad_enabled()
            and (x.dtype != torch.bfloat16 or fast_bfloat16()))


def _use_winograd(x: torch.Tensor, transformed: Optional[torch.Tensor]) -> bool:
    """Whether a 3×3 with this Winograd filter runs by conv3x3_winograd: CPU inference in float32 or
    bfloat16 (:func:`_cpu_inference`)."""
    return (transformed is not None and x.dtype == transformed.dtype
            and _cpu_inference(x, torch.float32, torch.bfloat16))


def _winograd_tile(dtype: torch.dtype) -> int:
    """The Winograd form for a dtype: F(2×2, 3×3) in bfloat16 (F(4×4)'s transforms lose too much in it),
    F(4×4, 3×3) otherwise (fewer multiplications)."""
    return 2 if dtype == torch.bfloat16 else 4


def _winograd_filter(weight: torch.Tensor, padding, dilation) -> Optional[torch.Tensor]:
    """winograd_weight(weight) in weight's dtype's form, for a 3×3 filter that conv3x3_winograd can run
    (dilation 1, padding 0 or 1 on each side), else None."""
    if weight.shape[-2:] != (3, 3) or tuple(dilation) != (1, 1) or any(p not in (0, 1) for p in padding):
        return None
    return winograd_weight(weight.detach(), _winograd_tile(weight.dtype))


class _WinogradFilters(nn.Module):
    """Base of the folded modules that hold 3×3 filters also in Winograd form: ``<weight>_winograd``
    buffers, derived at conversion and not in the state_dict. A dtype change that changes the form
    (to or from bfloat16) recomputes them from the filter as it was before the cast, so that they are
    rounded once."""

    def _hold_winograd(self, name: str, padding, dilation):
        """Registers ``<name>_winograd`` for the filter buffer ``name`` (None when Winograd cannot run it)."""
        self._winograd_of = getattr(self, "_winograd_of", ()) + (name,)
        self.register_buffer(name + "_winograd", _winograd_filter(getattr(self, name), padding, dilation),
                             persistent=False)

    def _apply(self, fn, recurse=True):
        before = {name: getattr(self, name) for name in self._winograd_of}
        super()._apply(fn, recurse)
        for name in self._winograd_of:
            transformed, tile = self._buffers[name + "_winograd"], _winograd_tile(getattr(self, name).dtype)
            if transformed is not None and transformed.shape[0] != (tile + 2) ** 2:
                source = before[name].to(torch.promote_types(before[name].dtype, torch.float32))
                self._buffers[name + "_winograd"] = fn(winograd_weight(source, tile))
        return self


def _is_channels_last(x: torch.Tensor) -> bool:
    """NHWC order in memory (dense, or a channel slice of a dense channels_last buffer)."""
    strides = x.stride()
    return (x.dim() == 4 and x.shape[1] > 1 and strides[1] == 1 and strides[3] >= x.shape[1]
            and not x.is_contiguous())


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


def bn_relu_conv1x1(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
    """``conv1x1(relu(x * scale + shift), weight, bias)`` (then ReLU): fused in bfloat16 on CPUs with
    AVX512_BF16 (:func:`fastladder.ops.bn_relu_conv1x1`), else bn_relu and the convolution in row bands of
    at most BAND_BYTES.

    x (Tensor[N, C, H, W], may be a channel slice of a dense-block buffer), weight [C_out, C, 1, 1]
    → Tensor[N, C_out, H, W] in x's layout."""
    if x.dtype == weight.dtype and _cpu_inference(x, torch.bfloat16):
        return fused_bn_relu_conv1x1(x, scale, shift, weight, bias, relu=relu)
    row_bytes = x.shape[0] * x.shape[1] * x.shape[3] * x.element_size()
    rows = max(1, BAND_BYTES // max(1, row_bytes))
    height = x.shape[2]
    if rows >= height:
        return conv2d(bn_relu(x, scale, shift), weight, bias, relu=relu)
    out = torch.empty((x.shape[0], weight.shape[0], height, x.shape[3]), dtype=x.dtype, device=x.device,
                      memory_format=_layout(x))
    for top in range(0, height, rows):
        band = x[:, :, top:top + rows]
        out[:, :, top:top + rows].copy_(conv2d(bn_relu(band, scale, shift), weight, bias, relu=relu))
    return out


def _fold_into_conv(weight: torch.Tensor, bias: Optional[torch.Tensor], norm: nn.BatchNorm2d):
    """(weight, bias) of ``norm(conv(x))`` as one convolution (BatchNorm after a convolution is affine)."""
    scale, shift = fold_batch_norm(norm)
    weight = weight * scale.view(-1, 1, 1, 1)
    bias = shift if bias is None else shift + bias * scale
    return weight, bias


def _plain(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().clone()


# --- modules ------------------------------------------------------------------------------------

class FoldedConv2d(nn.Module):
    """A Conv2d with a following BatchNorm folded into its weight and bias, and optionally the ReLU
    after it as the convolution's post-op. Shapes as the Conv2d's."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 groups: int, relu: bool):
        super().__init__()
        self.register_buffer("weight", _plain(weight))
        self.register_buffer("bias", _plain(bias))
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups, self.relu = groups, relu

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, norm: Optional[nn.BatchNorm2d] = None, relu: bool = False):
        weight, bias = conv.weight, conv.bias
        if norm is not None:
            weight, bias = _fold_into_conv(weight, bias, norm)
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      self.relu)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
                f"kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, relu={self.relu}")


class FoldedBNReluConv(_WinogradFilters):
    """:class:`~fastladder.nn.BNReluConv` with its BatchNorm as (scale, shift): fused BN-ReLU, then the
    convolution (a 1×1 in row bands). Shapes: [N, C_in, H, W] → [N, C_out, H, W]."""

    def __init__(self, scale, shift, weight, bias, padding, dilation):
        super().__init__()
        self.register_buffer("scale", _plain(scale))
        self.register_buffer("shift", _plain(shift))
        self.register_buffer("weight", _plain(weight))
        self.register_buffer("bias", _plain(bias))
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self._hold_winograd("weight", self.padding, self.dilation)

    @classmethod
    def from_module(cls, unit: BNReluConv):
        return cls(*fold_batch_norm(unit.norm), unit.conv.weight, unit.conv.bias, unit.conv.padding,
                   unit.conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[-2:] == (1, 1):
            return bn_relu_conv1x1(x, self.scale, self.shift, self.weight, self.bias)
        act = bn_relu(x, self.scale, self.shift)
        if self.weight_winograd is not None:
            return conv3x3(act, self.weight, self.weight_winograd, self.bias, padding=self.padding)
        return conv2d(act, self.weight, self.bias, padding=self.padding, dilation=self.dilation)


class FoldedDenseLayer(_WinogradFilters):
    """:class:`~fastladder.nn.DenseLayer` for inference: fused BN-ReLU over the (strided) input, norm2
    folded into conv1 with the ReLU as its post-op, then the 3×3.
    Shapes: [N, in_channels, H, W] → [N, growth_rate, H, W]."""

    def __init__(self, scale1, shift1, weight1, bias1, weight2, dilation: int):
        super().__init__()
        self.register_buffer("scale1", _plain(scale1))
        self.register_buffer("shift1", _plain(shift1))
        self.register_buffer("weight1", _plain(weight1))
        self.register_buffer("bias1", _plain(bias1))
        self.register_buffer("weight2", _plain(weight2))
        self.dilation = dilation
        self._hold_winograd("weight2", (1, 1), (dilation, dilation))

    @classmethod
    def from_module(cls, layer: DenseLayer):
        weight1, bias1 = _fold_into_conv(layer.conv1.weight, layer.conv1.bias, layer.norm2)
        return cls(*fold_batch_norm(layer.norm1), weight1, bias1, layer.conv2.weight, layer.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        rows = LAYER_BAND_ROWS * d
        bottleneck_bytes = x.shape[0] * self.weight1.shape[0] * x.shape[2] * x.shape[3] * x.element_size()
        if bottleneck_bytes > LAYER_BAND_BYTES and rows < x.shape[2]:
            return self._banded(x, rows)
        hidden = bn_relu_conv1x1(x, self.scale1, self.shift1, self.weight1, self.bias1, relu=True)
        return conv3x3(hidden, self.weight2, self.weight2_winograd, padding=(d, d), dilation=d)

    def _banded(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """The layer in bands of ``rows`` output rows, 1×1 and 3×3 together: each band's bottleneck is
        computed for its rows and the 3×3's d halo rows on either side, and stays in cache."""
        d, height = self.dilation, x.shape[2]
        out = torch.empty((x.shape[0], self.weight2.shape[0], height, x.shape[3]), dtype=x.dtype,
                          device=x.device, memory_format=_layout(x))
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            first, last = max(0, top - d), min(height, bottom + d)
            hidden = conv2d(bn_relu(x[:, :, first:last], self.scale1, self.shift1), self.weight1, self.bias1,
                            relu=True)
            if first > top - d or last < bottom + d:  # rows beyond the image: the 3×3's zero padding
                hidden = torch.nn.functional.pad(hidden, (0, 0, first - (top - d), bottom + d - last))
            out[:, :, top:bottom].copy_(conv3x3(hidden, self.weight2, self.weight2_winograd, padding=(0, d),
                                                dilation=d))
        return out


class FoldedDenseBlock(nn.ModuleDict):
    """:class:`~fastladder.nn.DenseBlock` for inference: one feature buffer in the input's layout, each
    :class:`FoldedDenseLayer` (children ``denselayer1`` …) reading its prefix and writing its k channels.
    Shapes as DenseBlock's (with ``split``: (features before the pool, output))."""

    def __init__(self, layers, in_channels: int, growth_rate: int, split: Optional[int]):
        super().__init__()
        self.in_channels, self.growth_rate, self.split = in_channels, growth_rate, split
        self.num_layers = len(layers)
        for i, layer in enumerate(layers):
            self.add_module(f"denselayer{i + 1}", layer)

    @classmethod
    def from_module(cls, block: DenseBlock):
        return cls([FoldedDenseLayer.from_module(layer) for layer in block.values()], block.in_channels,
                   block.growth_rate, block.split)

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.num_layers * self.growth_rate

    def forward(self, x: torch.Tensor):
        layers = list(self.values())
        if self.split is None:
            return self._run(layers, x)
        before = self._run(layers[:self.split], x)
        return before, self._run(layers[self.split:], torch.nn.functional.avg_pool2d(before, 2))

    def _run(self, layers, x: torch.Tensor) -> torch.Tensor:
        start = x.shape[1]
        buffer = torch.empty((x.shape[0], start + len(layers) * self.growth_rate, x.shape[2], x.shape[3]),
                             dtype=x.dtype, device=x.device, memory_format=_layout(x))
        buffer[:, :start].copy_(x)
        for layer in layers:
            buffer[:, start:start + self.growth_rate].copy_(layer(buffer[:, :start]))
            start += self.growth_rate
        return buffer


class FoldedTransition(nn.Module):
    """:class:`~fastladder.nn.Transition` for inference: BN-ReLU, 2×2 pool, 1×1, in bands of an even
    number of rows (the pool windows never straddle two). Shapes as Transition's."""

    def __init__(self, scale, shift, weight, bias, pool: bool):
        super().__init__()
        self.register_buffer("scale", _plain(scale))
        self.register_buffer("shift", _plain(shift))
        self.register_buffer("weight", _plain(weight))
        self.register_buffer("bias", _plain(bias))
        self.pool = pool

    @classmethod
    def from_module(cls, transition: Transition):
        return cls(*fold_batch_norm(transition.norm), transition.conv.weight, transition.conv.bias,
                   isinstance(transition.pool, nn.AvgPool2d))

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        act = bn_relu(x, self.scale, self.shift)
        if self.pool:
            act = torch.nn.functional.avg_pool2d(act, 2)
        return conv2d(act, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row_bytes = x.shape[0] * x.shape[1] * x.shape[3] * x.element_size()
        rows = max(2, BAND_BYTES // max(1, row_bytes)) // 2 * 2
        if rows >= x.shape[2]:
            return self._step(x)
        step = rows // 2 if self.pool else rows
        height = x.shape[2] // 2 if self.pool else x.shape[2]
        width = x.shape[3] // 2 if self.pool else x.shape[3]
        out = torch.empty((x.shape[0], self.weight.shape[0], height, width), dtype=x.dtype, device=x.device,
                          memory_format=_layout(x))
        for band, top in enumerate(range(0, height, step)):
            result = self._step(x[:, :, band * rows:(band + 1) * rows])
            out[:, :, top:top + result.shape[2]].copy_(result)
        return out


class FoldedLadderUpsample(_WinogradFilters):
    """:class:`~fastladder.nn.LadderUpsample` for inference: the skip projection as a banded fused
    BN-ReLU-1×1, the blend as one :func:`~fastladder.ops.ladder_blend` with its BatchNorm as (scale, shift).
    Shapes as LadderUpsample's."""

    def __init__(self, skip: Optional[Tuple[torch.Tensor, ...]], blend: Tuple[torch.Tensor, ...], mode: str,
                 low_channels: int):
        super().__init__()
        self.mode, self.low_channels = mode, low_channels
        self.projects_skip = skip is not None
        for name, value in zip(("skip_scale", "skip_shift", "skip_weight", "skip_bias"), skip or (None,) * 4):
            self.register_buffer(name, _plain(value))
        for name, value in zip(("blend_scale", "blend_shift", "blend_weight", "blend_bias"), blend):
            self.register_buffer(name, _plain(value))
        self._hold_winograd("blend_weight", (1, 1), (1, 1))

    def _has_hooks(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks or _global_forward_hooks
                    or _global_forward_pre_hooks)

    @classmethod
    def from_module(cls, up: LadderUpsample):
        skip = None
        if up.skip_conv is not None:
            skip = (*fold_batch_norm(up.skip_norm), up.skip_conv.weight, up.skip_conv.bias)
        blend = (*fold_batch_norm(up.blend_norm), up.blend_conv.weight, up.blend_conv.bias)
        return cls(skip, blend, up.mode, up.low_channels)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.projects_skip:
            projected = bn_relu_conv1x1(skip, self.skip_scale, self.skip_shift, self.skip_weight,
                                        self.skip_bias)
            # The skip (the whole DB1 buffer for the last transition-up) is dead after its projection, but
            # Module.__call__'s argument tuples keep it alive until the blend is done. When nobody else can
            # see it (a temporary handed over as ``up(x, skips.pop())``, no hooks on this module to read
            # its inputs), its storage is released now; otherwise it is left alone.
            if (sys.getrefcount(skip) <= _HANDED_OVER_REFERENCES and not skip.requires_grad
                    and not self._has_hooks()):
                skip.set_()
            skip = projected
        return ladder_blend(low, skip, self.blend_weight, self.blend_bias, mode=self.mode,
                            scale=self.blend_scale, shift=self.blend_shift, relu=True,
                            winograd_weight=self.blend_weight_winograd
                            if _use_winograd(skip, self.blend_weight_winograd) else None)


# --- conversion ---------------------------------------------------------------------------------

_CONVERTERS = (
    (BNReluConv, FoldedBNReluConv.from_module),
    (DenseBlock, FoldedDenseBlock.from_module),
    (DenseLayer, FoldedDenseLayer.from_module),
    (Transition, FoldedTransition.from_module),
    (LadderUpsample, FoldedLadderUpsample.from_module),
)


def _converter(module: nn.Module):
    return next((convert for cls, convert in _CONVERTERS if isinstance(module, cls)), None)


def _fuse_sequential(seq: nn.Sequential):
    """Conv2d → BatchNorm2d (→ ReLU) runs of a Sequential: the convolution absorbs the others, which
    become nn.Identity (the names and indices stay, so code that picks children by name still works)."""
    names = list(seq._modules)
    for i, name in enumerate(names[:-1]):
        conv, norm = seq._modules[name], seq._modules[names[i + 1]]
        if not (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                and isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and norm.running_mean is not None):
            continue
        after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
        relu = type(after) is nn.ReLU
        seq._modules[name] = FoldedConv2d.from_modules(conv, norm, relu)
        seq._modules[names[i + 1]] = nn.Identity()
        if relu:
            seq._modules[names[i + 2]] = nn.Identity()


def _convert_children(module: nn.Module):
    for name, child in list(module.named_children()):
        convert = _converter(child)
        if convert is not None:
            module._modules[name] = convert(child)
        else:
            _convert_children(child)
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module)


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm folded (see the module docstring).

    The model itself is left unchanged. The copy is in eval mode; its outputs equal
    ``model.eval()(x)`` within float tolerance. Modules keep their names (``features.denseblock1``,
    ``upsample.0``, ``classifier``, …), so forward hooks and ``get_submodule`` find them; a fused
    BatchNorm or ReLU becomes an ``nn.Identity`` that passes the convolution's output on.

    Raises:
        ValueError: a BatchNorm to fold has no running statistics.
    """
    fused = copy.deepcopy(model).eval()
    convert = _converter(fused)
    if convert is not None:
        return convert(fused).eval()
    _convert_children(fused)
    return fused


def is_fused(model: nn.Module) -> bool:
    """Whether :func:`fuse_for_inference` converted any module of ``model`` (its BatchNorms are then
    folded away: the training form and its state_dict keys are gone)."""
    folded = (FoldedConv2d, FoldedBNReluConv, FoldedDenseLayer, FoldedDenseBlock, FoldedTransition,
              FoldedLadderUpsample)
    return any(isinstance(module, folded) for module in model.modules())

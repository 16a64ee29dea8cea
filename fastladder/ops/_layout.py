"""Layout rules the fake kernels share with the C++ kernels (csrc/ops/*: output_format)."""
import torch


def output_memory_format(t):
    """channels_last when t is a dense channels_last tensor that is not also NCHW-contiguous, else NCHW.

    The compiled kernels pick the layout of their results by this same rule, so the fake (meta)
    kernels give the same strides."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _is_channels_last_slice(x):
    """A channel slice of a wider dense channels_last buffer (csrc/ops/bn_relu.h)."""
    if x.dim() != 4 or x.shape[1] < 2 or x.shape[2] * x.shape[3] < 2 \
            or output_memory_format(x) == torch.channels_last:
        return False
    _, c, h, w = x.shape
    _, s_c, s_h, s_w = x.stride()
    return s_c == 1 and s_w > c and (h == 1 or s_h == w * s_w)


def channels_last_slice_format(x):
    """The result layout of the operators that read channel slices in place (bn_relu,
    conv3x3_winograd; csrc/ops/bn_relu.h, bn_relu_output_format): channels_last for channels_last x
    and for channel slices of a channels_last buffer, NCHW otherwise."""
    return torch.channels_last if _is_channels_last_slice(x) else output_memory_format(x)


def autocast_dtype(*tensors):
    """The autocast dtype that applies to these tensors' device, or None when autocast is off."""
    device_type = tensors[0].device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None

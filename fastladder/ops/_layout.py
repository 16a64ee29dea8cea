"""Layout rules the fake kernels share with the C++ kernels (csrc/ops/*: output_format)."""
import torch


def output_memory_format(t):
    """channels_last when t is a dense channels_last tensor that is not also NCHW-contiguous, else NCHW.

    The compiled kernels pick the layout of their results by this same rule, so the fake (meta)
    kernels give the same strides."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def autocast_dtype(*tensors):
    """The autocast dtype that applies to these tensors' device, or None when autocast is off."""
    device_type = tensors[0].device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None

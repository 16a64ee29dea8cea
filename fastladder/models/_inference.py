"""optimize_for_inference: the eval fast path of fastladder models, made ready for repeated calls."""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["optimize_for_inference", "InferenceModel"]


class InferenceModel(nn.Module):
    """Wraps an eval-mode model: converts the input to the model's memory format, runs it without
    autograd, returns NCHW-contiguous output. ``module`` is the (possibly compiled) model."""

    def __init__(self, module: nn.Module, channels_last: bool):
        super().__init__()
        self.module = module
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.module(x)
        return out.contiguous() if isinstance(out, torch.Tensor) else out


def optimize_for_inference(model: nn.Module, example_input: torch.Tensor, *, channels_last: Optional[bool] = None,
                           compile: bool = False, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Prepares a fastladder model for inference and returns a callable ``f(x) -> logits``.

    The eval forward of fastladder models already folds every BatchNorm into the fused operators
    and convolutions (and bands its wide BN-ReLU-1×1 steps to bound memory). On top of that:

    Args:
        model: a fastladder model, changed in place (eval mode, memory format, dtype): keep a copy if
            you still need the original.
        example_input (Tensor[N, C, H, W]): checked once (and used to warm up / compile).
        channels_last: convert weights and inputs to channels_last (NHWC). Default: True on CUDA
            (tensor-core layouts); False on CPU, where the eval forward of LadderDenseNet already runs
            its activations in NHWC and channels_last weights measured no faster.
        compile: wrap the model in torch.compile (the compile runs on example_input).
        dtype: run in this dtype (e.g. torch.bfloat16 on CPUs with AVX512_BF16); inputs are cast.

    Returns:
        An :class:`InferenceModel`; its output equals ``model.eval()(x)`` within float tolerance.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ValueError(f"example_input must be an image batch [N, C, H, W], got "
                         f"{tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else example_input}")
    model.eval()
    if channels_last is None:
        channels_last = example_input.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = model
    if dtype is not None:
        model = model.to(dtype)
        module = _CastInput(model, dtype)
    if compile:
        module = torch.compile(module)
    wrapped = InferenceModel(module, channels_last)
    wrapped(example_input)  # checks the input, warms up oneDNN primitives, compiles
    return wrapped


class _CastInput(nn.Module):
    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x.to(self.dtype))

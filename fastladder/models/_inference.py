"""optimize_for_inference: the eval fast path of fastladder models, made ready for repeated calls."""
import contextlib
import weakref
from typing import Optional

import torch
import torch.nn as nn

from fastladder import _C, _extension  # noqa: F401  (_extension: loads _C, or explains why not)
from fastladder.nn import fuse_for_inference

__all__ = ["optimize_for_inference", "InferenceModel"]


class _CpuArena:
    """A model's CPU inference arena (csrc/ops/cpu/arena.h): inside ``with arena:``, large CPU blocks
    (≥ 1 MiB) that the model frees are kept and reused by its next call instead of being returned to the
    system and faulted in again (0.2-0.3 s per 1024×2048 LDN frame on the build machine). Its idle blocks
    add up to at most twice the most it had in use at once (at 1024×2048: 455 MB kept between calls for
    240 MB of activations); they are freed when the model is garbage-collected."""

    def __init__(self):
        self.arena = _C.Arena()
        weakref.finalize(self, self.arena.close)

    def __deepcopy__(self, memo):
        return _CpuArena()

    def __reduce__(self):
        return _CpuArena, ()

    def stats(self) -> dict:
        """live_bytes, idle_bytes, peak_bytes, idle_blocks, and the reused and fresh block counts."""
        return self.arena.stats()

    def __enter__(self):
        self.arena.enter()

    def __exit__(self, *exc_info):
        self.arena.exit()


class InferenceModel(nn.Module):
    """Wraps an inference model: runs it without autograd, returns NCHW-contiguous output. ``module``
    is the (possibly compiled) model.

    The input is not converted: with channels_last weights the first convolution (oneDNN, cuDNN)
    already writes channels_last activations, and a converted copy of the image would stay alive for
    the whole forward. With ``reuse_memory`` the large CPU activation blocks are reused from call to
    call (see :class:`_CpuArena`)."""

    def __init__(self, module: nn.Module, channels_last: bool, reuse_memory: bool = True):
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self._arena = _CpuArena() if reuse_memory else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_arena = self._arena is not None and x.device.type == "cpu"
        arena = self._arena if use_arena else contextlib.nullcontext()
        with torch.inference_mode(), arena:
            out = self.module(x)
            return out.contiguous() if isinstance(out, torch.Tensor) else out


def optimize_for_inference(model: nn.Module, example_input: Optional[torch.Tensor] = None, *,
                           channels_last: Optional[bool] = None, compile: bool = False,
                           dtype: Optional[torch.dtype] = None, reuse_memory: bool = True) -> nn.Module:
    """A fast inference copy of a fastladder model: a callable ``f(x) -> logits``.

    The copy is :func:`fastladder.nn.fuse_for_inference`'s: every BatchNorm folded once into fused
    BN-ReLU operators or into the neighbouring convolution, the wide BN-ReLU-1×1 steps banded to bound
    memory, the ladder blends fused, and on CPU the 3×3 convolutions run by Winograd's algorithm
    (:func:`fastladder.ops.conv3x3_winograd`: F(4×4, 3×3) in float32, F(2×2, 3×3) in bfloat16 on CPUs
    with AVX512_BF16, which also fuse each BN-ReLU-1×1, :func:`fastladder.ops.bn_relu_conv1x1`).
    ``model`` itself is not changed.

    Args:
        model: a fastladder model (or any module; the blocks fastladder knows are converted).
        example_input (Tensor[N, C, H, W], optional): checked once and used to warm up oneDNN's
            primitives; needed with ``compile`` (the compile runs on it).
        channels_last: run the activations (and weights) in channels_last (NHWC). Default True: oneDNN
            (CPU) and tensor cores (CUDA) convolve NHWC without reorders around every call.
        compile: wrap the model in torch.compile (the compile runs on example_input).
        dtype: run in this dtype (e.g. torch.bfloat16 on CPUs with AVX512_BF16): the BatchNorms are
            folded in float32 first, then the weights cast; inputs are cast.
        reuse_memory: on CPU, keep the large activation blocks (≥ 1 MiB) a call frees for the next call
            instead of returning them to the system, whose page faults on fresh memory cost 0.2-0.3 s of a
            1.4 s LDN-121 frame at 1024×2048 (2 threads). The model then holds up to twice its peak
            activation memory between calls (455 MB at 1024×2048, 133 MB at 448×1024), until it is
            deleted. Pass False where memory matters more than speed.

    Returns:
        An :class:`InferenceModel`; its output equals ``model.eval()(x)`` within float tolerance
        (NCHW-contiguous, in ``dtype``).
    """
    if compile and example_input is None:
        raise ValueError("optimize_for_inference(compile=True) needs an example_input to compile on")
    bad_example = not isinstance(example_input, torch.Tensor) or example_input.dim() != 4
    if example_input is not None and bad_example:
        raise ValueError(
            f"example_input must be an image batch [N, C, H, W], got "
            f"{tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else example_input}")
    if channels_last is None:
        channels_last = True
    module = fuse_for_inference(model)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if dtype is not None:
        module = _CastInput(module.to(dtype), dtype)
    if compile:
        module = torch.compile(module)
    wrapped = InferenceModel(module, channels_last, reuse_memory)
    if example_input is not None:
        wrapped(example_input)  # checks the input, warms up oneDNN primitives, compiles
    return wrapped


class _CastInput(nn.Module):
    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x.to(self.dtype))

"""ONNX export of fastladder models, with standard-domain operators only.

:func:`export_onnx` writes the plain-PyTorch twin of a model (same weights) through PyTorch's
TorchScript-based ONNX exporter; :func:`onnx_metadata` reads back the metadata it recorded. The SSD
post-processing graph (ONNX NonMaxSuppression) is in :mod:`fastladder.models._export_ssd`.
"""
import copy
import io
import json
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.errors import ArgumentError, FastladderError
from fastladder.models.densenet import DenseNet
from fastladder.models.ladder_densenet import LadderDenseNet
from fastladder.models.ssd import SSD

__all__ = ["export_onnx", "onnx_metadata", "MIN_OPSET", "MAX_OPSET"]

# Softmax over the last axis, Unsqueeze/ReduceSum with axes as inputs: opset 13; the TorchScript
# exporter stops at 20.
MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME = "image"


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise FastladderError("ONNX export needs the onnx package (pip install onnx)") from None
    return onnx


def _unwrap(model: nn.Module) -> nn.Module:
    """The fastladder model inside the wrappers of optimize_for_inference (which hold its converted copy as
    ``.module``) and of torch.compile (``._orig_mod``), or model itself."""
    while not isinstance(model, (DenseNet, LadderDenseNet, SSD)):
        inner = getattr(model, "_orig_mod", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


class _StaticPyramidPooling(nn.Module):
    """The twin's SpatialPyramidPooling for one input size (h, w), in operators ONNX has.

    ONNX has no adaptive average pooling, and the pyramid's grids follow the map's aspect ratio
    (a Python round of the size), so they are fixed here: each adaptive pooling is a product with two
    constant averaging matrices (rows [g, h], columns [w, g']) holding PyTorch's windows
    ``[floor(i·n/g), ceil((i+1)·n/g))``; the upsampling goes back to the fixed (h, w)."""

    def __init__(self, spp: nn.Module, size: Tuple[int, int]):
        super().__init__()
        self.spp, self.size = spp, size
        h, w = size
        for i, grid in enumerate(spp.grids):
            self.register_buffer(f"rows{i}", _averaging_matrix(h, grid))
            cols = _averaging_matrix(w, max(1, round(grid * w / h)))
            self.register_buffer(f"cols{i}", cols.t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spp.bottleneck(x)
        pyramid = [x]
        for i, level in enumerate(self.spp.levels):
            pooled = torch.matmul(torch.matmul(getattr(self, f"rows{i}"), x), getattr(self, f"cols{i}"))
            pyramid.append(F.interpolate(level(pooled), size=self.size, mode="bilinear", align_corners=False))
        return self.spp.fuse(torch.cat(pyramid, 1))


def _averaging_matrix(n: int, g: int) -> torch.Tensor:
    """[g, n]: row i averages the inputs of adaptive pooling window i (n inputs into g outputs)."""
    matrix = torch.zeros(g, n, dtype=torch.float64)
    for i in range(g):
        start, end = (i * n) // g, -(-((i + 1) * n) // g)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix.float()


class _SSDHeadOutputs(nn.Module):
    """SSD's (loc [B, P, 4], conf_logits [B, P, C]): the network without its post-processing (a
    fastladder operator)."""

    def __init__(self, ssd: SSD):
        super().__init__()
        self.ssd = ssd

    def forward(self, x: torch.Tensor):
        return self.ssd.head(self.ssd.forward_features(x))


def _check_metadata(metadata: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ArgumentError(f"metadata must be a dict of str -> JSON-able values, got "
                            f"{type(metadata).__name__}")
    props = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ArgumentError(f"metadata keys must be non-empty strings, got {key!r}")
        try:
            props[key] = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as error:
            raise ArgumentError(f"metadata[{key!r}] is not JSON-able ({error})") from None
    return props


def onnx_metadata(model) -> Dict[str, Any]:
    """The ``metadata`` that :func:`export_onnx` recorded: a path or an ``onnx.ModelProto`` → dict
    (each value JSON-decoded; a value that is not JSON is returned as its string)."""
    onnx = _import_onnx()
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    out = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Union[str, os.PathLike], *,
                dynamic: bool = True, opset: int = 18, metadata: Optional[Mapping[str, Any]] = None,
                postprocess: bool = False):
    """Exports a fastladder model to ONNX (standard-domain operators only, float32, on the CPU).

    What is exported: the model's plain-PyTorch twin (:func:`fastladder.reference.models.reference_twin`,
    same weights, eval mode) for DenseNet and LadderDenseNet, and SSD's network up to its head. The
    eval forwards of the models call fastladder's operators (torch.ops.fastladder.*, fused BN-ReLU,
    ladder blends), which no ONNX exporter knows: translating each of them would need an ONNX
    function per operator and a second definition of every fusion, while the twin is already the
    specification they are tested against, written in operators that every runtime fuses itself
    (BatchNorm, Relu, Conv, Resize). BatchNorms appear as BatchNormalization nodes with the running
    statistics; ONNX Runtime and OpenVINO fold them.

    The exporter: ``torch.onnx.export(..., dynamo=False)``, PyTorch's TorchScript-based exporter.
    In torch 2.14 the default is the torch.export-based one (dynamo=True): it needs the onnxscript
    package and, for a tiny LDN, took 24 s where this one takes about 1 s, with the same operators
    (after ONNX Runtime's graph optimizations) and the same results; the TorchScript exporter gives
    dynamic sizes through ``dynamic_axes`` (Shape → Resize sizes), and its deprecation warning is
    silenced here.

    Sizes (``dynamic=True``; with ``dynamic=False`` everything is fixed to example_input's shape):

    - DenseNet backbones and LadderDenseNets with the dense context block (the registry's LDNs,
      ``densenet121_32x``, ``dilated8_densenet121``): batch, H and W dynamic. Every size that the
      model itself accepts is valid (no multiple of the output stride needed: every upsampling goes
      to its skip's exact size, the pools round as in PyTorch). The graph refuses a smaller input
      (min(H, W) below the model's smallest side, e.g. 61 for the LDNs, 29 for DenseNet-121: a
      coarsest map below 1×1): a size check at its start makes the runtime fail ("cannot be
      reshaped") where it would otherwise pool empty maps into wrong numbers.
    - LadderDenseNets with ``context="spp"``: batch dynamic, H and W fixed to example_input's: the
      pyramid's grids follow the coarse map's aspect ratio (see :class:`_StaticPyramidPooling`).
    - SSD: batch dynamic, H and W fixed: the priors (and, at the nominal size, the Caffe steps)
      belong to one input size. Export once per deployment size.

    Inputs and outputs: input ``image`` [N, C, H, W] (normalised as for the model: the metadata
    should carry the mean and std); output ``logits`` ([N, classes, H, W] for LDNs, [N, classes] for
    DenseNet); SSD: ``loc`` [N, P, 4], ``conf_logits`` [N, P, classes] and ``priors`` [P, 4]
    ``(cx, cy, w, h)`` (a constant), or with ``postprocess=True`` the padded detections ``boxes``
    [N, K, 4] (image-relative xyxy, clipped to [0, 1]), ``scores`` [N, K], ``labels`` [N, K]
    (int64, -1 in the padding) and ``num_detections`` [N] (int64), as :class:`fastladder.ops.Detections`,
    computed in the graph (see :func:`fastladder.models._export_ssd.append_ssd_postprocess` for its
    differences from ``ssd_postprocess``).

    Args:
        model: a DenseNet, LadderDenseNet or SSD of the registry (or torch.compile's wrapper of one;
            not what optimize_for_inference returned, whose BatchNorms are folded); not changed.
        example_input (Tensor[N, C, H, W]): the export size (and the fixed size where one is).
        path: the .onnx file written.
        dynamic: batch (and H, W where the model allows) as symbolic dimensions.
        opset: ONNX opset, 13 to 20.
        metadata: str → JSON-able values (e.g. model name, classes, mean/std on the 0–255 scale,
            input size), stored JSON-encoded in the model's metadata_props; read back with
            :func:`onnx_metadata`.
        postprocess: SSD only: the post-processing in the graph.

    Returns:
        The written ``onnx.ModelProto`` (already checked with ``onnx.checker.check_model``).

    Raises:
        ArgumentError: an unsupported model, a bad example_input, opset, metadata or postprocess.
        FastladderError: the onnx package is missing.
    """
    from fastladder.nn.inference import is_fused

    onnx = _import_onnx()
    model = _unwrap(model)
    if is_fused(model):
        raise ArgumentError("model: export the model itself, not what optimize_for_inference returned (its "
                            "BatchNorms are folded into fastladder operators that ONNX does not have)")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        is_tensor = isinstance(example_input, torch.Tensor)
        shape = tuple(example_input.shape) if is_tensor else type(example_input).__name__
        raise ArgumentError(f"example_input must be an image batch [N, C, H, W], got {shape}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ArgumentError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    props = _check_metadata(metadata)
    path = os.fspath(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ArgumentError(f"path: the folder of {path} does not exist")
    if postprocess and not isinstance(model, SSD):
        raise ArgumentError(f"postprocess=True is for SSD models, got {type(model).__name__}")
    example = example_input.detach().to("cpu", torch.float32)
    if hasattr(model, "check_input"):
        try:
            model.check_input(example)
        except ValueError as error:
            raise ArgumentError(f"example_input: {error}") from None
    elif example.shape[1] != getattr(model, "in_channels", example.shape[1]):
        raise ArgumentError(f"example_input must have {model.in_channels} channels, got "
                            f"{tuple(example.shape)}")

    batch_only = {0: "batch"}
    spatial = {0: "batch", 2: "height", 3: "width"}
    if isinstance(model, SSD):
        ssd = copy.deepcopy(model).to("cpu", torch.float32).eval()
        network, axes = _SSDHeadOutputs(ssd), batch_only
        output_names = ["loc", "conf_logits"]
        output_axes = {"loc": batch_only, "conf_logits": batch_only}
    elif isinstance(model, (DenseNet, LadderDenseNet)):
        from fastladder.reference.models import reference_twin
        network = reference_twin(model).to("cpu", torch.float32).eval()
        axes = spatial
        if isinstance(model, LadderDenseNet) and model.config["context"] == "spp":
            network.context = _StaticPyramidPooling(network.context, _context_input_size(network, example))
            axes = batch_only
        output_names = ["logits"]
        output_axes = {"logits": axes if isinstance(model, LadderDenseNet) else batch_only}
    else:
        raise ArgumentError(f"export_onnx supports DenseNet, LadderDenseNet and SSD models, got "
                            f"{type(model).__name__}")
    dynamic_axes = {INPUT_NAME: axes, **output_axes} if dynamic else None

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # "legacy TorchScript-based ONNX export" / "will be removed": the choice is explained above
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # the models' input checks read sizes as Python values: right for the traced graph, whose
        # sizes the runtime checks (fixed dimensions) or the size guard below covers
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())

    if dynamic and axes is spatial:
        _refuse_smaller_inputs(proto, _min_side(model, network))
    if isinstance(model, SSD):
        from fastladder.models._export_ssd import append_priors_output, append_ssd_postprocess
        priors = ssd.priors_for(tuple(example.shape[-2:])).to("cpu", torch.float32)
        if postprocess:
            append_ssd_postprocess(proto, priors, ssd.postprocess)
        else:
            append_priors_output(proto, priors)
    proto.producer_name = "fastladder"
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    # written whole or not at all: a failed or interrupted export leaves no truncated file at path
    partial = f"{path}.partial"
    try:
        onnx.save(proto, partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return proto


def _context_input_size(twin: nn.Module, example: torch.Tensor) -> Tuple[int, int]:
    """(h, w) of the coarse map the context block sees for example's size."""
    seen = []
    handle = twin.context.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            twin(example[:1])
    finally:
        handle.remove()
    return seen[0]



def _min_side(model: nn.Module, twin: nn.Module) -> int:
    """The smallest H = W the model accepts: LadderDenseNet.check_input's rule, or where the
    DenseNet's pools still have an output (a bisection over square inputs)."""
    def accepts(side: int) -> bool:
        x = torch.zeros(1, model.in_channels, side, side)
        try:
            if isinstance(model, LadderDenseNet):
                model.check_input(x)
            else:
                with torch.no_grad():
                    twin(x)
        except (ValueError, RuntimeError):
            return False
        return True

    high = 1
    while not accepts(high):  # doubling, so that no forward runs on a large input
        if high > 8192:
            raise ArgumentError(f"found no input size that {type(model).__name__} accepts")
        high *= 2
    low = high // 2 + 1 if high > 1 else 1  # the answer is in [low, high]
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if accepts(middle) else (middle + 1, high)
    return low


def _refuse_smaller_inputs(proto, min_side: int):
    """Makes the graph fail on an input smaller than min_side × min_side, where ONNX Runtime would
    otherwise pool empty maps into wrong numbers: the image passes through a Reshape whose target
    shape is the image's own, with W + 1 when min(H, W) < min_side (so the runtime raises)."""
    from onnx import helper, numpy_helper

    checked = f"{INPUT_NAME}_size_checked"
    for node in proto.graph.node:
        node.input[:] = [checked if name == INPUT_NAME else name for name in node.input]

    def const(name, value):
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    prefix = "size_check/"
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], [prefix + "shape"]),
        helper.make_node("Slice", [prefix + "shape", const(prefix + "2", [2]), const(prefix + "4", [4])],
                         [prefix + "hw"]),
        helper.make_node("ReduceMin", [prefix + "hw"], [prefix + "side"], keepdims=1),
        helper.make_node("Less", [prefix + "side", const(prefix + "min_side", [min_side])],
                         [prefix + "small"]),
        helper.make_node("Cast", [prefix + "small"], [prefix + "extra"], to=7),  # INT64
        helper.make_node("Pad", [prefix + "extra", const(prefix + "pads", [3, 0])], [prefix + "delta"]),
        helper.make_node("Add", [prefix + "shape", prefix + "delta"], [prefix + "target"]),
        helper.make_node("Reshape", [INPUT_NAME, prefix + "target"], [checked]),
    ]
    for node in nodes:
        node.name = node.output[0]
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)

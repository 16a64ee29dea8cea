"""``fastladder export``: a trained model to ONNX, with the preprocessing it was trained with.

    fastladder export --weights runs/ldn121/best.pt --out ldn121.onnx
    fastladder export --weights runs/ssd/best.pt --out ssd.onnx --postprocess

The checkpoint says which model to build and how its input is normalized; both go into the ONNX
file's metadata (``fastladder.models.onnx_metadata``), so a runtime user knows the model name,
classes, mean/std (RGB, 0–255 scale) and input size without the checkpoint. A plain state_dict needs
``--model``, ``--num-classes`` and ``--dataset`` (or ``--mean``/``--std``).
"""
import argparse
import os

from fastladder.errors import ArgumentError
from fastladder.eval import _common

__all__ = ["register"]

# the export size of segmentation models when none is given: their graphs take any size (the
# dense-context LDNs and baselines) or need the deployment size (--height/--width, context="spp")
DEFAULT_SEGMENTATION_SIZE = (512, 1024)


def register(subparsers):
    """Adds ``export`` to the fastladder CLI."""
    export = subparsers.add_parser(
        "export", help="export a trained model to ONNX (standard operators, preprocessing in the metadata)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_arguments(export)
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--dataset", default=None,
                        help="whose normalization to record when the checkpoint does not (plain state_dict)")
    export.add_argument("--height", type=int, default=None,
                        help="export height (default: an SSD's input size, else 512; the graph takes other "
                             "sizes where the model allows, see fastladder.models.export_onnx)")
    export.add_argument("--width", type=int, default=None, help="export width (default: SSD's, else 1024)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (13 to 20)")
    export.add_argument("--static", action="store_true",
                        help="fix batch, height and width to the export size (default: dynamic where "
                             "allowed)")
    export.add_argument("--postprocess", action="store_true",
                        help="SSD: decoding, per-class NMS and top-k in the graph (padded detections out)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.set_defaults(func=cmd_export)


def _export_size(args, meta):
    """(height, width): the flags, else an SSD's recorded input size, else DEFAULT_SEGMENTATION_SIZE."""
    default = meta.get("input_size") or DEFAULT_SEGMENTATION_SIZE
    if isinstance(default, int):
        default = (default, default)
    height = args.height if args.height is not None else int(default[0])
    width = args.width if args.width is not None else int(default[1])
    for name, value in (("--height", height), ("--width", width)):
        if value <= 0:
            raise ArgumentError(f"{name} must be positive, got {value}")
    return height, width


def cmd_export(args) -> int:
    import torch

    from fastladder.models import export_onnx

    if os.path.exists(args.out) and not args.overwrite:
        raise ArgumentError(f"--out {args.out} exists: pass --overwrite to replace it")
    model, meta = _common.load_model_and_meta(args, task=None)
    task = meta.get("task") or "seg"
    mean, std = _common.normalization(args, meta, task)
    height, width = _export_size(args, meta)
    metadata = {**meta, "mean": mean, "std": std, "task": task,
                "dataset": _common.dataset_name(args, meta), "normalization_scale": "0-255 RGB"}
    example = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        export_onnx(model, example, args.out, dynamic=not args.static, opset=args.opset, metadata=metadata,
                    postprocess=args.postprocess)
    size_mib = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out} ({size_mib:.1f} MiB): {meta['model_name']}, {meta['num_classes']} classes, "
          f"exported at {height}x{width}, opset {args.opset}, "
          f"{'static' if args.static else 'dynamic'} shapes; input 'image' = (RGB pixel - mean) / std with "
          f"mean {mean}, std {std} (0-255 scale)")
    return 0

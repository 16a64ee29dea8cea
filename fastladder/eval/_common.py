"""What the inference commands (eval seg/det, predict, visualize, attack) share: the model options,
reading a checkpoint and its description of the model, the preprocessing it was trained with, the
evaluation dataset, and the JSON report.

A training checkpoint describes its model (name, constructor arguments, classes) and how its input
was normalized (the dataset, mean/std RGB on the 0–255 scale, for SSD the input size). The commands
take all of that from it; a flag overrides it; a plain state_dict needs the flags.
"""
import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastladder.errors import ArgumentError, DataError

__all__ = ["json_object", "add_model_arguments", "task_subparsers", "load_model_and_meta", "dataset_name",
           "normalization", "palette", "open_eval_dataset", "write_json", "to_json", "check_limit",
           "frames_or_report", "raise_for_failures"]


def task_subparsers(subparsers, name: str, help: str):
    """The sub-command group ``name`` (e.g. ``eval``) of the CLI, made on first use: other modules
    add their own tasks (``eval det`` ...) to the same group."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        parser.add_subparsers(dest=f"{name}_task", metavar="TASK", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"the `fastladder {name}` command exists without sub-commands; the modules that add "
                       f"tasks to it must create it with task_subparsers")


def json_object(text: str) -> Dict[str, Any]:
    """argparse type of the JSON-object options (--model-kwargs, --dataset-kwargs ...)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg} at column {error.colno}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"growth_rate\": 8}}', got {text!r}")
    return value


def add_weights_argument(parser, required: bool = True):
    parser.add_argument("--weights", required=required,
                        help="a training checkpoint (it records the model, its classes and the "
                             "normalization) or a plain state_dict (.pt)")


def add_model_arguments(parser, *, weights_required: bool = True):
    """--model, --weights, --num-classes, --model-kwargs, --mean, --std, --device."""
    parser.add_argument("--model", default=None,
                        help="registered model name (fastladder.models.list_models()); default: the "
                             "checkpoint's")
    add_weights_argument(parser, weights_required)
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of a plain state_dict's model (default: the checkpoint's)")
    parser.add_argument("--model-kwargs", type=json_object, default=None, metavar="JSON",
                        help='constructor arguments as JSON, e.g. \'{"growth_rate": 4}\' (they override a '
                             "checkpoint's)")
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="per-channel input mean on the 0-255 scale (default: the checkpoint's, else "
                             "the dataset's)")
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="per-channel input std on the 0-255 scale (default: the checkpoint's, else "
                             "the dataset's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def check_limit(limit: Optional[int]):
    if limit is not None and limit <= 0:
        raise ArgumentError(f"--limit must be positive, got {limit}")


# --- checkpoint and model -------------------------------------------------------------------------

def load_model_and_meta(args, *, task: Optional[str]):
    """(model in eval mode, meta) from ``args.weights`` and the model flags, through the one
    checkpoint loader (:func:`fastladder.models.load_model_and_meta`).

    ``meta`` is the checkpoint's :class:`fastladder.models.ModelMeta` as a dict (``model_name``,
    ``model_kwargs``, ``num_classes``, ``class_names``, ``task``, ``dataset``, ``mean``, ``std`` on the
    0–255 scale, ``input_size`` of an SSD), None where it is silent (a plain state_dict).
    ``--model``, ``--num-classes`` and ``--model-kwargs`` override the checkpoint's; ``task``, when
    given, is the task the command serves (another model's is an ArgumentError).
    """
    from fastladder.models import load_model_and_meta as load

    model, meta = load(args.weights, args.model, args.num_classes, **dict(args.model_kwargs or {}))
    meta = meta.to_dict()
    if task is not None and meta["task"] is not None and meta["task"] != task:
        raise ArgumentError(f"--weights {args.weights} holds a {meta['task']} model ({meta['model_name']}); "
                            f"this command is for {task}")
    return model, meta


def dataset_name(args, meta: Dict[str, Any]) -> Optional[str]:
    """--dataset, else the dataset the checkpoint was trained on (None for a plain state_dict)."""
    return getattr(args, "dataset", None) or meta.get("dataset")


def normalization(args, meta: Dict[str, Any], task: str) -> Tuple[list, list]:
    """(mean, std) RGB on the 0–255 scale: --mean/--std, else the checkpoint's, else the registry's
    default for --dataset. A plain state_dict without either is an ArgumentError."""
    from fastladder.data.registry import dataset_info

    mean = getattr(args, "mean", None) or meta.get("mean")
    std = getattr(args, "std", None) or meta.get("std")
    if mean is None or std is None:
        name = dataset_name(args, meta)
        if name is None:
            raise ArgumentError(f"--weights {args.weights} does not record the input normalization it was "
                                f"trained with: give --dataset, or --mean and --std (RGB, 0-255 scale)")
        info = dataset_info(task, name)
        mean = info.mean if mean is None else mean
        std = info.std if std is None else std
    if any(not math.isfinite(v) or v <= 0 for v in std):
        raise ArgumentError(f"--std must be positive and finite, got {list(std)}")
    return [float(v) for v in mean], [float(v) for v in std]


def palette(task: str, dataset: Optional[str], num_classes: int):
    """Colours of classes 0…num_classes−1, uint8 [num_classes, 3]: the dataset's own where it covers
    every class, else the Pascal VOC colour map."""
    from fastladder.data.registry import dataset_info
    from fastladder.data.voc import voc_colormap

    colours = dataset_info(task, dataset).palette if dataset is not None else None
    if colours is None or colours.shape[0] < num_classes:
        colours = voc_colormap(min(num_classes, 256))
    return colours


# --- datasets -------------------------------------------------------------------------------------

def open_eval_dataset(task: str, name: str, root: Optional[str], split: str, **kwargs):
    """The ``split`` of registered dataset ``name`` under ``root``, as its loader reads it.

    The synthetic sets are read (in the Cityscapes / MOT15 layout they are written in), never
    generated here: an evaluation must not overwrite the data a run was trained on, and finding
    nothing at ``root`` is an error.
    """
    from fastladder.data.registry import build_dataset

    if root is None:
        raise ArgumentError(f"--dataset {name} needs --root: the folder of its official layout (for "
                            f"synthetic: where the training run generated it)")
    if not os.path.isdir(root):
        raise DataError(f"--root {root}: no such folder")
    if name == "synthetic":
        _check_generated(task, root, split)
        name = "cityscapes" if task == "seg" else "mot15"
        if task == "det":  # the generation parameters do not apply to reading
            kwargs = {k: v for k, v in kwargs.items() if k == "val_fraction"}
    return build_dataset(task, name, root, split, **kwargs)


def _check_generated(task: str, root: str, split: str):
    if task == "seg":
        from fastladder.data.synthetic import MANIFEST_NAME
    else:
        from fastladder.data.synthetic_detection import MANIFEST_NAME
    manifest = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        raise DataError(f"--root {root}: no synthetic set there ({MANIFEST_NAME} is missing); give the "
                        f"folder the training run generated")
    if task == "seg":
        try:
            with open(manifest) as f:
                splits = json.load(f).get("splits") or {}
        except (ValueError, AttributeError) as error:
            raise DataError(f"{manifest}: not a synthetic-scenes manifest ({error})") from error
        if split not in splits:
            raise DataError(f"{manifest}: split {split!r} was not generated (there: {sorted(splits)})")


# --- output ---------------------------------------------------------------------------------------

def to_json(value):
    """NaN (an undefined metric) as null: JSON has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str, report: Dict[str, Any]):
    """Writes ``report`` to ``path`` (its folder made when missing), through a temporary file so
    that an interrupted write never leaves half a report."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(temporary, path)
    print(f"wrote {path}")


# --- inputs that fail -----------------------------------------------------------------------------

def frames_or_report(source, iterate_frames, failures: List[str]):
    """The frames of an input source; a source that cannot be read is reported on stderr (one line
    naming it), recorded in ``failures`` and skipped, so that one bad image does not stop a folder.
    A video that breaks off keeps the frames decoded before."""
    try:
        yield from iterate_frames(source)
    except DataError as error:
        print(f"skipped: {error}", file=sys.stderr)
        failures.append(str(source.path))


def raise_for_failures(failures: Sequence[str], written: int):
    """After a run over inputs: a DataError listing those that could not be read (non-zero exit)."""
    if failures:
        shown = ", ".join(failures[:20]) + (f" and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise DataError(f"{len(failures)} input(s) could not be read (the other {written} were written): "
                        f"{shown}")

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

from fastladder.errors import ArgumentError, CheckpointError, DataError

__all__ = ["add_model_arguments", "task_subparsers", "read_checkpoint", "load_model_and_meta",
           "normalization", "open_eval_dataset", "write_json", "to_json", "check_limit"]


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


def _json_object(text: str) -> Dict[str, Any]:
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
    parser.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
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

_META_FIELDS = ("model_name", "model_kwargs", "num_classes", "class_names", "task", "dataset", "mean", "std",
                "image_size")


def read_checkpoint(path) -> Dict[str, Any]:
    """The dict in a checkpoint or state_dict file; a missing, truncated, corrupt or foreign file is a
    CheckpointError naming it (never a suggestion to unpickle arbitrary code)."""
    import pickle
    import zipfile

    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--weights {path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in text or "Unsupported global" in text:
            reason = "it holds Python objects other than tensors and plain containers, not a checkpoint"
        elif isinstance(error, EOFError) or "central directory" in text or "failed finding" in text:
            reason = f"truncated or corrupt ({text})"
        else:
            reason = f"not a PyTorch checkpoint, or corrupt ({text})"
        raise CheckpointError(f"--weights {path}: cannot read it: {reason}") from error
    if not isinstance(loaded, dict):
        raise CheckpointError(f"--weights {path}: expected a checkpoint dict or a state_dict, got "
                              f"{type(loaded).__name__}")
    return loaded


def _recorded_meta(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """What a training checkpoint says about its model and preprocessing (None where it is silent)."""
    meta = dict.fromkeys(_META_FIELDS)
    if not isinstance(checkpoint.get("model"), dict):
        return meta  # a plain state_dict
    for field in ("model_name", "model_kwargs", "num_classes"):
        meta[field] = checkpoint.get(field)
    recorded = checkpoint.get("meta")
    if isinstance(recorded, dict):
        meta.update({field: recorded[field] for field in _META_FIELDS if recorded.get(field) is not None})
    config = checkpoint.get("config")
    if isinstance(config, dict):
        meta["dataset"] = meta["dataset"] or config.get("dataset")
        if meta["image_size"] is None and config.get("image_size") is not None:
            meta["image_size"] = list(config["image_size"])
    if meta["task"] is None and meta["model_name"]:
        meta["task"] = "det" if str(meta["model_name"]).startswith("ssd") else "seg"
    return meta


def load_model_and_meta(args, *, task: Optional[str], num_classes: Optional[int] = None):
    """(model in eval mode, meta) from ``args.weights`` and the model flags.

    ``meta`` is a dict: ``model_name``, ``model_kwargs``, ``num_classes``, ``class_names``, ``task``,
    ``dataset``, ``mean``, ``std`` (0–255 RGB) and ``image_size`` (SSD), each None where neither the
    checkpoint nor a flag tells it. ``args.model``, ``args.num_classes`` (or ``num_classes``) and
    ``args.model_kwargs`` override the checkpoint's.
    """
    from fastladder.eval._weights import load_model

    checkpoint = read_checkpoint(args.weights)
    meta = _recorded_meta(checkpoint)
    if task is not None and meta["task"] is not None and meta["task"] != task:
        raise ArgumentError(f"--weights {args.weights} holds a {meta['task']} model ({meta['model_name']}); "
                            f"this command is for {task}")
    kwargs = dict(getattr(args, "model_kwargs", None) or {})
    classes = args.num_classes if getattr(args, "num_classes", None) is not None else num_classes
    if meta["num_classes"] is not None and getattr(args, "num_classes", None) is None:
        classes = None  # the checkpoint's count (a dataset's is only the fallback of a plain state_dict)
    try:
        model = load_model(checkpoint, args.model, classes, **kwargs)
    except TypeError as error:  # an unknown constructor argument of --model-kwargs
        raise ArgumentError(f"--model-kwargs {kwargs}: {error}") from error
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"--weights {args.weights}: {error}") from error
    meta["model_name"] = args.model or meta["model_name"]
    meta["num_classes"] = classes if classes is not None else meta["num_classes"]
    if meta["image_size"] is None and hasattr(model, "image_size"):
        meta["image_size"] = [int(v) for v in model.image_size]
    return model.eval(), meta


# The normalization each dataset's training uses, RGB on the 0–255 scale.
def _dataset_normalization(task: str, dataset: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if task == "det":
        from fastladder.data.box_transforms import IMAGENET_MEAN, IMAGENET_STD
        return IMAGENET_MEAN, IMAGENET_STD
    if dataset in ("cityscapes", "synthetic"):
        from fastladder.data.transforms import CITYSCAPES_MEAN, CITYSCAPES_STD
        return CITYSCAPES_MEAN, CITYSCAPES_STD
    from fastladder.train.segmentation import IMAGENET_MEAN, IMAGENET_STD
    return IMAGENET_MEAN, IMAGENET_STD


# The dataset of a checkpoint that does not record one (written before checkpoints described their model).
_DEFAULT_DATASETS = {"seg": "cityscapes", "det": "mot15"}


def dataset_name(args, meta: Dict[str, Any], task: str) -> str:
    """--dataset, else the checkpoint's dataset, else (an older checkpoint or a plain state_dict) the
    task's default, with a warning naming it."""
    name = getattr(args, "dataset", None) or meta.get("dataset")
    if name is None:
        name = _DEFAULT_DATASETS[task]
        print(f"warning: --weights {args.weights} does not record its dataset or normalization; using "
              f"{name}'s (give --dataset, or --mean/--std)", file=sys.stderr)
        meta["dataset"] = name
    return name


def normalization(args, meta: Dict[str, Any], task: str, dataset: Optional[str] = None
                  ) -> Tuple[list, list]:
    """(mean, std) RGB on the 0–255 scale: --mean/--std, else the checkpoint's, else the default of
    the dataset the checkpoint (or --dataset) names."""
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    if mean is None:
        mean = meta.get("mean")
    if std is None:
        std = meta.get("std")
    if mean is None or std is None:
        default_mean, default_std = _dataset_normalization(task, dataset or dataset_name(args, meta, task))
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    if any(not math.isfinite(v) or v <= 0 for v in std):
        raise ArgumentError(f"--std must be positive and finite, got {list(std)}")
    return [float(v) for v in mean], [float(v) for v in std]


# --- datasets -------------------------------------------------------------------------------------

def open_eval_dataset(task: str, name: str, root: Optional[str], split: str, **kwargs):
    """The ``split`` of dataset ``name`` under ``root``, as its loader reads it (no transforms).

    The synthetic sets are read, never generated here: an evaluation must not overwrite the data a
    run was trained on, and finding nothing at ``root`` is an error.
    """
    if root is None:
        raise ArgumentError(f"--dataset {name} needs --root: the folder of its official layout (for "
                            f"synthetic: where the training run generated it)")
    if not os.path.isdir(root):
        raise DataError(f"--root {root}: no such folder")
    try:
        return _open(task, name, root, split, **kwargs)
    except ValueError as error:  # a missing split folder, list file or manifest entry: named by the loader
        if isinstance(error, DataError):
            raise
        raise DataError(f"--dataset {name} --root {root} --split {split}: {error}") from error


def _open(task: str, name: str, root: str, split: str, **kwargs):
    from fastladder import data

    if task == "seg":
        if name == "voc":
            return data.VOCSegmentation(root, image_set=split, **kwargs)
        if name == "camvid":
            return data.CamVid(root, split, **kwargs)
        if name == "synthetic":
            from fastladder.data.synthetic import MANIFEST_NAME
            manifest = os.path.join(root, MANIFEST_NAME)
            if not os.path.isfile(manifest):
                raise DataError(f"--root {root}: no synthetic scenes there ({MANIFEST_NAME} is missing); "
                                f"give the folder the training run generated")
            with open(manifest) as f:
                splits = json.load(f).get("splits") or {}
            if split not in splits:
                raise DataError(f"{manifest}: split {split!r} was not generated (there: {sorted(splits)})")
            return data.Cityscapes(root, split, target="trainIds", **kwargs)
        return data.Cityscapes(root, split, **kwargs)
    if name == "voc":
        from fastladder.data.voc import VOCDetection
        return VOCDetection(root, image_set=split, **kwargs)
    from fastladder.data.mot import MOT15Detection
    if name == "synthetic":
        from fastladder.data.synthetic_detection import MANIFEST_NAME
        if not os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            raise DataError(f"--root {root}: no synthetic pedestrians there ({MANIFEST_NAME} is missing); "
                            f"give the folder the training run generated")
        kwargs = {k: v for k, v in kwargs.items() if k == "val_fraction"}
    return MOT15Detection(root, split, **kwargs)


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

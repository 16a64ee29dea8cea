"""Checkpoints: what a model file holds, the one reader of such files and the one model loader.

A training checkpoint (written by :mod:`fastladder.train`) is a dict that ``torch.load`` reads with
``weights_only=True``::

    model       the model's state_dict (no "module." / "_orig_mod." prefixes)
    meta        ModelMeta.to_dict(): how to rebuild the model and what input it expects
    optimizer, scheduler, scaler, step, epoch, rng, config, metrics, best   (training state)

Checkpoints written before ``meta`` existed hold ``model_name``, ``model_kwargs`` and
``num_classes`` instead (and usually ``config``); they still load, with a warning naming the
defaults taken for what they do not record. A plain state_dict (parameter name → tensor) loads
when the caller names the model and its number of classes.

Every problem with a file is a :class:`fastladder.errors.CheckpointError` (a ValueError) naming
the file: missing, empty, truncated, corrupt, not a checkpoint, or weights that do not fit the model
(the missing / unexpected / mis-shaped keys listed).
"""
import dataclasses
import os
import pickle
import warnings
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from fastladder.errors import CheckpointError
from fastladder.models._state_dict import key_problems

__all__ = ["ModelMeta", "read_checkpoint", "read_state_dict", "strip_wrapper_prefixes", "load_model",
           "load_model_and_meta", "WRAPPER_PREFIXES"]

PathLike = Union[str, os.PathLike]
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_KEYS_SHOWN = 8


@dataclasses.dataclass
class ModelMeta:
    """What a checkpoint says about its model: how to build it and what input it expects.

    Attributes:
        model_name: a name of :func:`fastladder.models.list_models`.
        num_classes: the model's outputs per pixel / prior (detection: background included).
        model_kwargs: the other constructor arguments (besides num_classes and backbone_weights).
        task: "seg" or "det" (None when unknown).
        dataset: the registry name of the training dataset (:func:`fastladder.data.list_datasets`),
            None when unknown.
        class_names: one name per class index, or None.
        mean, std: the input normalization it was trained with, RGB on the 0–255 pixel scale
            (``(pixel − mean) / std``), or None when unknown.
        input_size: SSD's input (height, width) in pixels; None for segmentation models.
    """

    model_name: str
    num_classes: int
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    task: Optional[str] = None
    dataset: Optional[str] = None
    class_names: Optional[Tuple[str, ...]] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    input_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if not isinstance(self.model_name, str) or not self.model_name:
            raise CheckpointError(f"ModelMeta.model_name must be a model name, got {self.model_name!r}")
        classes = self.num_classes
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise CheckpointError(f"ModelMeta.num_classes must be a positive int, got {self.num_classes!r}")
        if not isinstance(self.model_kwargs, Mapping):
            raise CheckpointError(f"ModelMeta.model_kwargs must be a dict, got {self.model_kwargs!r}")
        self.model_kwargs = dict(self.model_kwargs)
        if self.class_names is not None:
            self.class_names = tuple(str(name) for name in self.class_names)
            if len(self.class_names) != self.num_classes:
                raise CheckpointError(f"ModelMeta has {len(self.class_names)} class_names for "
                                      f"{self.num_classes} classes")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                values = tuple(float(v) for v in value)
                if len(values) != 3 or (name == "std" and min(values) <= 0):
                    raise CheckpointError(f"ModelMeta.{name} must be 3 numbers (RGB, 0–255 scale"
                                          f"{', positive' if name == 'std' else ''}), got {value!r}")
                setattr(self, name, values)
        if self.input_size is not None:
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or min(size) <= 0:
                raise CheckpointError(f"ModelMeta.input_size must be (height, width), got "
                                      f"{self.input_size!r}")
            self.input_size = size

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python values (lists, not tuples): JSON- and ``weights_only``-safe."""
        values = dataclasses.asdict(self)
        for key in ("class_names", "mean", "std", "input_size"):
            if values[key] is not None:
                values[key] = list(values[key])
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "meta") -> "ModelMeta":
        """The inverse of :meth:`to_dict`; unknown or missing keys are a CheckpointError naming ``source``."""
        if not isinstance(values, Mapping):
            raise CheckpointError(f"{source}: 'meta' must be a dict, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted(key for key in ("model_name", "num_classes") if key not in values)
        if unknown or missing:
            raise CheckpointError(f"{source}: 'meta' has unknown keys {unknown} / lacks {missing}")
        try:
            return cls(**dict(values))
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from None


# --- reading files ------------------------------------------------------------------------------

def _classify_unreadable(path: str, error: Exception, weights_only: bool) -> str:
    """Why torch.load failed on ``path``: truncated, corrupt, not a checkpoint, or not weights-only."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        # torch.save's zip format: a truncated file has lost its central directory at the end
        if not zipfile.is_zipfile(path):
            return f"is truncated ({size} bytes: the end of its zip archive is missing)"
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()  # the first member whose CRC does not match, or None
        except (zipfile.BadZipFile, OSError, EOFError) as zip_error:
            damaged = f"({zip_error})"
        if damaged is not None:
            return f"is corrupt ({size} bytes; the record {damaged} is damaged)"
        text = str(error)
        # torch's refusal of a class outside its weights_only allowlist, in an intact file
        if weights_only and isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
            unsupported = text[text.index("Unsupported global"):].splitlines()[0]
            return ("holds Python objects besides tensors and plain containers, which weights_only "
                    f"loading refuses ({unsupported}); if you trust the file, load it with "
                    f"weights_only=False")
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"is corrupt ({size} bytes; {type(error).__name__}: {first})"
    if head[:1] == b"\x80":
        # the legacy (pre-zip) torch.save format starts with a pickle protocol byte
        return f"is truncated or corrupt ({size} bytes, legacy torch format; {type(error).__name__})"
    return f"is not a PyTorch checkpoint ({size} bytes, no torch.save header)"


def read_checkpoint(path: PathLike, *, map_location: Optional[Union[str, torch.device]] = "cpu",
                    weights_only: bool = True) -> Dict[str, Any]:
    """The dict stored in a checkpoint file (``torch.load``), as it is.

    Args:
        path: the file.
        map_location: where tensors go; CPU by default.
        weights_only: only tensors and plain Python types (safe on files from elsewhere).

    Raises:
        CheckpointError: naming the file and saying whether it is missing, empty, truncated,
            corrupt, not a checkpoint, or holds something other than a dict.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: is not a file (a checkpoint file was expected)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except PermissionError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from error
    except Exception as error:  # unpickling errors have many types; all mean "not loadable here"
        raise CheckpointError(f"{path}: {_classify_unreadable(path, error, weights_only)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: is not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state_dict without the ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile)
    prefixes, where every key carries one (in any nesting of the two)."""
    state_dict = dict(state_dict)
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                changed = True
    return state_dict


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def _split(contents: Mapping[str, Any], source: str) -> Tuple[Dict[str, torch.Tensor], Optional[Mapping]]:
    """(state_dict with wrapper prefixes stripped, the checkpoint dict or None for a plain state_dict)."""
    for wrapper in ("model", "state_dict"):
        inner = contents.get(wrapper)
        if isinstance(inner, Mapping):
            if not _is_state_dict(inner):
                raise CheckpointError(f"{source}: the checkpoint's {wrapper!r} entry is not a state_dict "
                                      f"(parameter name → tensor)")
            return strip_wrapper_prefixes(inner), contents
    if _is_state_dict(contents):
        return strip_wrapper_prefixes(contents), None
    keys = sorted(map(str, contents))[:_MAX_KEYS_SHOWN]
    raise CheckpointError(f"{source}: is not a checkpoint: neither a checkpoint (a dict with a 'model' "
                          f"state_dict) nor a state_dict (name → tensor); its keys start with {keys}")


def read_state_dict(weights: Union[PathLike, Mapping[str, Any]], *, what: str = "weights",
                    weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """The state_dict in ``weights``: a path or a loaded dict, either a plain state_dict or a checkpoint
    wrapping one under "model" or "state_dict"; wrapper prefixes stripped. ``what`` names a dict
    argument in errors (a path names itself)."""
    if isinstance(weights, (str, os.PathLike)):
        source = os.fspath(weights)
        weights = read_checkpoint(source, weights_only=weights_only)
    elif isinstance(weights, Mapping):
        source = what
    else:
        raise CheckpointError(f"{what} must be a path or a state_dict, got {type(weights).__name__}")
    return _split(weights, source)[0]


# --- metadata -----------------------------------------------------------------------------------

def _task_of(model: nn.Module) -> Optional[str]:
    """The dataset registry's task a model solves: "det" for an SSD, "seg" for a ladder DenseNet."""
    from fastladder.models.ladder_densenet import LadderDenseNet
    from fastladder.models.ssd import SSD

    return "det" if isinstance(model, SSD) else "seg" if isinstance(model, LadderDenseNet) else None


def _legacy_meta(checkpoint: Mapping[str, Any], model_name: str, num_classes: int, source: str,
                 model: nn.Module) -> ModelMeta:
    """The ModelMeta of a checkpoint written without one: its config where recorded, else the
    defaults of the model's task (named in a warning)."""
    from fastladder.data.registry import dataset_info

    task = _task_of(model)
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), Mapping) else {}
    dataset = config.get("dataset") if config.get("task", task) == task else None
    assumed = []
    if dataset is None and task is not None:
        # what the commands assumed before checkpoints recorded it
        dataset = "cityscapes" if task == "seg" else "mot15" if num_classes == 2 else "voc"
        assumed.append(f"dataset {dataset!r}")
    info = None
    if task is not None:
        try:
            info = dataset_info(task, dataset)
        except ValueError:
            info = None
    mean = std = class_names = None
    if info is not None:
        mean, std = info.mean, info.std
        assumed.append(f"mean {list(mean)} and std {list(std)} (RGB, 0–255 scale)")
        if info.num_classes == num_classes:
            class_names = info.class_names
    input_size = tuple(model.image_size) if task == "det" and hasattr(model, "image_size") else None
    warnings.warn(f"{source}: the checkpoint does not record its preprocessing (written by an older "
                  f"fastladder); assuming {', '.join(assumed) or 'nothing'}: pass the mean/std the model "
                  f"was trained with if they differ", stacklevel=4)  # the line that called load_model*
    return ModelMeta(model_name, int(num_classes), dict(checkpoint.get("model_kwargs") or {}), task=task,
                     dataset=dataset if info is not None else None, class_names=class_names, mean=mean,
                     std=std, input_size=input_size)


# --- the model loader ---------------------------------------------------------------------------

def load_model_and_meta(weights: Union[PathLike, Mapping[str, Any]], model_name: Optional[str] = None,
                        num_classes: Optional[int] = None, *, weights_only: bool = True,
                        **model_kwargs) -> Tuple[nn.Module, ModelMeta]:
    """(model in eval mode with the weights loaded, its :class:`ModelMeta`).

    Args:
        weights: a checkpoint or a plain state_dict: a path, or such a dict already loaded.
        model_name: required for a plain state_dict; for a checkpoint it must agree with the one
            recorded.
        num_classes: required for a plain state_dict; for a checkpoint it must agree.
        weights_only: ``torch.load(weights_only=True)``: no code runs from the file.
        **model_kwargs: constructor arguments; for a checkpoint they override the recorded ones (e.g.
            ``memory_efficient``), for a plain state_dict they describe the architecture.

    For a plain state_dict the meta knows the model only: dataset, class_names, mean and std are
    None (the caller supplies them). An old checkpoint without "meta" gets its dataset's defaults,
    with a warning naming them.

    Raises:
        CheckpointError: the file is missing or unreadable (which way, see :func:`read_checkpoint`),
            a plain state_dict lacks model_name or num_classes, they disagree with the checkpoint, or
            the weights do not fit the model (missing, unexpected and mis-shaped keys listed).
    """
    return _load_model_and_meta(weights, model_name, num_classes, weights_only, model_kwargs)


def _load_model_and_meta(weights, model_name: Optional[str], num_classes: Optional[int], weights_only: bool,
                         model_kwargs: Dict[str, Any]) -> Tuple[nn.Module, ModelMeta]:
    """:func:`load_model_and_meta`'s work, one call deep under both public functions (so that
    warnings point at their caller)."""
    from fastladder.models._registry import create_model

    if isinstance(weights, (str, os.PathLike)):
        source = os.fspath(weights)
        contents = read_checkpoint(source, weights_only=weights_only)
    elif isinstance(weights, Mapping):
        source, contents = "weights", weights
    else:
        raise CheckpointError(f"weights must be a path or a dict, got {type(weights).__name__}")
    state_dict, checkpoint = _split(contents, source)
    meta = None
    if checkpoint is not None and "meta" in checkpoint:
        meta = ModelMeta.from_dict(checkpoint["meta"], source)
        recorded_name, recorded_classes = meta.model_name, meta.num_classes
        recorded_kwargs = dict(meta.model_kwargs)
    elif checkpoint is not None:
        recorded_name, recorded_classes = checkpoint.get("model_name"), checkpoint.get("num_classes")
        recorded_kwargs = dict(checkpoint.get("model_kwargs") or {})
    else:
        recorded_name = recorded_classes = None
        recorded_kwargs = {}
    if model_name is not None and recorded_name is not None and model_name != recorded_name:
        raise CheckpointError(f"model_name={model_name!r} but checkpoint {source} holds a {recorded_name!r}")
    if num_classes is not None and recorded_classes is not None and int(num_classes) != recorded_classes:
        raise CheckpointError(f"num_classes={num_classes} but checkpoint {source} was trained for "
                              f"{recorded_classes} classes")
    model_name = model_name if model_name is not None else recorded_name
    num_classes = num_classes if num_classes is not None else recorded_classes
    kind = "checkpoint" if checkpoint is not None else "plain state_dict"
    if model_name is None:
        raise CheckpointError(f"{source} is a {kind} without a model name: pass model_name (e.g. --model "
                              f"ladder_densenet121)")
    if num_classes is None:
        raise CheckpointError(f"{source} is a {kind} without the number of classes: pass num_classes "
                              f"(e.g. --num-classes 19)")
    # the weights come from the file: loading backbone weights first would be wasted work
    for key in ("backbone_weights", "num_classes"):
        recorded_kwargs.pop(key, None)
        model_kwargs.pop(key, None)
    kwargs = {**recorded_kwargs, **model_kwargs}
    try:
        model = create_model(model_name, num_classes=int(num_classes), **kwargs)
    except TypeError as error:
        raise CheckpointError(f"{source}: model {model_name!r} cannot be built with {kwargs}: "
                              f"{error}") from error
    problems = key_problems(state_dict, model.state_dict())
    if problems:
        raise CheckpointError(f"{source} does not fit model {model_name!r}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    if meta is None and checkpoint is not None:
        meta = _legacy_meta(checkpoint, model_name, int(num_classes), source, model)
    elif meta is None:
        task = _task_of(model)
        input_size = tuple(model.image_size) if task == "det" and hasattr(model, "image_size") else None
        meta = ModelMeta(model_name, int(num_classes), kwargs, task=task, input_size=input_size)
    if model_kwargs:
        meta = dataclasses.replace(meta, model_kwargs=kwargs)
    return model, meta


def load_model(weights: Union[PathLike, Mapping[str, Any]], model_name: Optional[str] = None,
               num_classes: Optional[int] = None, *, weights_only: bool = True, **model_kwargs) -> nn.Module:
    """The model of a checkpoint or state_dict, in eval mode (see :func:`load_model_and_meta`)."""
    return _load_model_and_meta(weights, model_name, num_classes, weights_only, model_kwargs)[0]

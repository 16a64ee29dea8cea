"""Building a model from a training checkpoint or from a plain state_dict.

A checkpoint (written by the training loop) is a dict with "model" (the state_dict), "model_name",
"model_kwargs" and "num_classes", plus optimizer state etc. that inference does not need. A plain
state_dict holds only parameter and buffer tensors: the model name and the number of classes must
then come from the caller.
"""
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from fastladder.models._state_dict import key_problems

__all__ = ["load_model", "read_weights"]

# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_KEYS_SHOWN = 8


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def _strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    state_dict = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def read_weights(weights, *, source: str = "weights",
                 weights_only: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Reads a checkpoint or a state_dict (a path, or an already loaded dict).

    Returns:
        (state_dict, metadata): metadata holds "model_name", "model_kwargs" and "num_classes" from a
        checkpoint (an empty dict for a plain state_dict).
    """
    if isinstance(weights, (str, os.PathLike)):
        source = os.fspath(weights)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"weights file {source!r} does not exist")
        try:
            weights = torch.load(source, map_location="cpu", weights_only=weights_only)
        except Exception as error:  # unpickling errors have many types; all mean "not loadable here"
            refused = weights_only and "weights_only" in str(error)
            hint = (" It holds objects other than tensors and plain containers: if you trust the file, "
                    "load it with weights_only=False." if refused else "")
            raise RuntimeError(f"cannot read weights file {source!r}: {type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''}.{hint}") from error
    if not isinstance(weights, Mapping):
        raise ValueError(f"{source}: expected a checkpoint dict or a state_dict, got "
                         f"{type(weights).__name__}")
    if "model" in weights and isinstance(weights["model"], Mapping):
        state_dict = weights["model"]
        metadata = {key: weights[key] for key in ("model_name", "model_kwargs", "num_classes")
                    if key in weights}
        if not _is_state_dict(state_dict):
            raise ValueError(f"{source}: the checkpoint's 'model' entry is not a state_dict (str -> Tensor)")
    elif _is_state_dict(weights):
        state_dict, metadata = weights, {}
    else:
        keys = sorted(map(str, weights))[:_MAX_KEYS_SHOWN]
        raise ValueError(f"{source}: neither a checkpoint (a dict with a 'model' state_dict) nor a "
                         f"state_dict (str -> Tensor); its keys start with {keys}")
    return _strip_wrapper_prefixes(state_dict), metadata


def _check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, model_name: str):
    problems = key_problems(state_dict, model.state_dict())
    if problems:
        raise ValueError(f"{source} does not fit model {model_name!r}: " + "; ".join(problems))


def load_model(weights, model_name: Optional[str] = None, num_classes: Optional[int] = None, *,
               weights_only: bool = True, **model_kwargs) -> nn.Module:
    """A registered model built as its weights say, with those weights loaded, in eval mode.

    Args:
        weights: a path to a checkpoint ({"model": state_dict, "model_name", "model_kwargs",
            "num_classes", ...}) or to a plain state_dict, or such a dict already loaded. Keys that all
            start with "module." (DataParallel) or "_orig_mod." (torch.compile) are stripped of it.
        model_name: a name from fastladder.models.list_models(); required for a plain state_dict; for
            a checkpoint, it must agree with the one recorded.
        num_classes: required for a plain state_dict; for a checkpoint, it must agree.
        weights_only: load with ``torch.load(weights_only=True)`` (no arbitrary code from pickles).
        **model_kwargs: constructor arguments; for a checkpoint they override the recorded ones
            (e.g. ``memory_efficient``), for a plain state_dict they describe the architecture.

    Raises:
        ValueError: a plain state_dict without model_name or num_classes, a disagreement with the
            checkpoint, or weights whose keys or shapes do not fit the model (listed).
        FileNotFoundError, RuntimeError: the file is missing or cannot be read.
    """
    from fastladder.models import create_model

    source = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "weights"
    state_dict, metadata = read_weights(weights, source=source, weights_only=weights_only)
    if metadata:
        recorded_name, recorded_classes = metadata.get("model_name"), metadata.get("num_classes")
        if model_name is not None and recorded_name is not None and model_name != recorded_name:
            raise ValueError(f"model_name={model_name!r} but checkpoint {source} holds a {recorded_name!r}")
        if num_classes is not None and recorded_classes is not None and num_classes != recorded_classes:
            raise ValueError(f"num_classes={num_classes} but checkpoint {source} was trained for "
                             f"{recorded_classes} classes")
        model_name = model_name if model_name is not None else recorded_name
        num_classes = num_classes if num_classes is not None else recorded_classes
        recorded_kwargs = dict(metadata.get("model_kwargs") or {})
        # the weights come from the checkpoint: loading backbone weights again would be wasted work
        recorded_kwargs.pop("backbone_weights", None)
        recorded_kwargs.pop("num_classes", None)
        model_kwargs = {**recorded_kwargs, **model_kwargs}
    kind = "checkpoint" if metadata else "plain state_dict"
    if model_name is None:
        raise ValueError(f"{source} is a {kind} without a model name: pass model_name (e.g. --model "
                         f"ladder_densenet121)")
    if num_classes is None:
        raise ValueError(f"{source} is a {kind} without the number of classes: pass num_classes "
                         f"(e.g. --num-classes 19)")
    model = create_model(model_name, num_classes=int(num_classes), **model_kwargs)
    _check_keys(model, state_dict, source, model_name)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()

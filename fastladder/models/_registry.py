"""The model registry: register_model, create_model, list_models."""
import fnmatch
from typing import Callable, Dict, List

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator: registers a builder ``fn(num_classes=..., backbone_weights=None, **kw)`` under fn.__name__."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> List[str]:
    """Sorted names of the registered models that match the shell-style pattern."""
    return sorted(name for name in _MODELS if fnmatch.fnmatchcase(name, pattern))


def create_model(name: str, num_classes: int = 19, backbone_weights=None, **kwargs):
    """Builds a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the classifier.
        backbone_weights: a path or a state_dict (torchvision DenseNet keys, old ``norm.1`` style
            accepted) loaded into the backbone; a missing or mismatched key is a ValueError.
        **kwargs: passed on to the model's constructor (e.g. ``memory_efficient=True``, or
            ``growth_rate=8, num_init_features=16`` for a tiny model).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, backbone_weights=backbone_weights, **kwargs)

"""The model registry: register_model, create_model, list_models."""
import fnmatch
from typing import Callable, Dict, List, Optional

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator: registers a builder ``fn(num_classes=..., backbone_weights=None, **kw)`` under its
    ``__name__``."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> List[str]:
    """Sorted names of the registered models that match the shell-style pattern."""
    return sorted(name for name in _MODELS if fnmatch.fnmatchcase(name, pattern))


def create_model(name: str, num_classes: Optional[int] = None, backbone_weights=None, **kwargs):
    """Builds a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the classifier; None takes the builder's own default (DenseNets 1000
            ImageNet classes, ladder DenseNets 19 Cityscapes classes, SSDs 21 VOC classes).
        backbone_weights: a path or a state_dict (torchvision DenseNet keys, old ``norm.1`` style
            accepted) loaded into the backbone; a missing or mismatched key is a ValueError.
        **kwargs: passed on to the model's constructor (e.g. ``memory_efficient=True``, or
            ``growth_rate=8, num_init_features=16`` for a tiny model).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _MODELS[name](backbone_weights=backbone_weights, **kwargs)

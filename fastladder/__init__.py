"""fastladder: fused C++/CUDA operators and models for dense prediction in large images."""
import importlib

from fastladder._extension import build_info
from fastladder import models, nn, ops, reference

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "nn", "models", "reference", "data", "train", "eval", "analysis",
           "__version__"]

# The pipelines import on first use: `import fastladder` stays as light as the operators need.
_PIPELINES = ("data", "train", "eval", "analysis")


def __getattr__(name):
    if name in _PIPELINES:
        return importlib.import_module(f"fastladder.{name}")
    raise AttributeError(f"module 'fastladder' has no attribute {name!r}")

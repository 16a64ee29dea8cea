"""fastladder: fused C++/CUDA operators and models for dense prediction in large images."""
from fastladder._extension import build_info
from fastladder import models, nn, ops, reference

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "nn", "models", "reference", "__version__"]

"""fastladder: fused C++/CUDA operators and models for dense prediction in large images."""
from fastladder._extension import build_info
from fastladder import ops, nn, reference
from fastladder import models

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "nn", "reference", "__version__"]
__all__ += ["models"]

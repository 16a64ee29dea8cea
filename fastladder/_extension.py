"""Loads fastladder._C exactly once, or says exactly why it cannot and how to fix it.

Every public operator goes through torch.ops.fastladder.*, which exists only after _C is loaded;
checking here means a user never meets "operator does not exist" later.
"""
import os

import torch

from fastladder._build_hash import source_hash

REBUILD_COMMAND = "CUDA_HOME=/usr/local/cuda pip install --no-build-isolation ."
# The operators this Python package calls; a _C that lacks one is stale.
REQUIRED_OPS = (
    "upsample_concat",
    "upsample_concat_backward",
    "upsample_concat_rows",
    "ladder_blend_bands",
    "bn_relu",
    "bn_relu_backward",
    "box_iou",
    "nms",
    "batched_nms",
    "encode_boxes",
    "decode_boxes",
    "ssd_postprocess",
)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCE_ROOT = os.path.dirname(_PACKAGE_DIR)


def _fail(reason):
    raise ImportError(
        f"fastladder: the compiled extension fastladder._C {reason}\n"
        f"Rebuild it from the fastladder source folder with:\n    {REBUILD_COMMAND}\n"
        "(torch must be installed first; fastladder is built against the torch it finds.)"
    )


def _load():
    try:
        from fastladder import _C
    except ImportError as error:
        text = str(error)
        if "undefined symbol" in text or "version" in text.lower():
            _fail(f"does not match the installed torch {torch.__version__} (it was built against another "
                  f"release): {text}")
        if os.path.isdir(os.path.join(_SOURCE_ROOT, "csrc")) and not any(
                name.startswith("_C.") for name in os.listdir(_PACKAGE_DIR)):
            _fail(f"is missing: this is the source folder {_PACKAGE_DIR}, which holds no build. Either run from "
                  "another folder (so that the installed fastladder is imported), or build in place with "
                  f"`python setup.py build_ext --inplace`. ({text})")
        _fail(f"is missing or cannot be loaded: {text}")
    info = _C.build_info()
    running = torch.__version__.split("+")[0]
    if info["torch_version"] != running:
        _fail(f"was built against torch {info['torch_version']}, but torch {running} is installed")
    # In a source checkout (csrc/ beside the package) a changed source means a stale build.
    if os.path.isdir(os.path.join(_SOURCE_ROOT, "csrc")):
        current = source_hash(_SOURCE_ROOT)
        if current != info["source_hash"]:
            _fail(f"is stale: csrc/ changed since it was built (built from {info['source_hash']}, "
                  f"sources now {current})")
    missing = [name for name in REQUIRED_OPS if not hasattr(torch.ops.fastladder, name)]
    if missing:
        _fail(f"is stale: it lacks the operators {', '.join(missing)}")
    return _C


_C = _load()


def build_info():
    """What this build of fastladder._C contains.

    Returns:
        dict with ``with_cuda`` (bool: CUDA kernels compiled in), ``cuda_version`` (str or None),
        ``torch_version`` (the torch it was compiled against), ``source_hash`` (fingerprint of csrc/),
        and ``cuda_available`` (whether torch sees a CUDA device now).
    """
    info = dict(_C.build_info())
    info["cuda_available"] = torch.cuda.is_available()
    return info

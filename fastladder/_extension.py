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
    "winograd_weight",
    "conv3x3_winograd",
    "bn_relu",
    "bn_relu_conv1x1",
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
            _fail(f"is missing: this is the source folder {_PACKAGE_DIR}, which holds no build. Either run "
                  "from another folder (so that the installed fastladder is imported), or build in place "
                  f"with `python setup.py build_ext --inplace`. ({text})")
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


def parse_cuda_archs(text):
    """TORCH_CUDA_ARCH_LIST text ("8.0;8.6 9.0+PTX") -> its entries, in order (["8.0", "8.6", "9.0+PTX"])."""
    return [entry for entry in text.replace(";", " ").split() if entry]


def _capability(entry):
    """(major, minor) of an arch entry such as "8.6", "9.0a" or "9.0+PTX"."""
    major, minor = entry.split("+")[0].split(".")
    return int(major), int(minor.rstrip("af"))


def cuda_arch_covers(archs, capability):
    """Whether a build for ``archs`` (TORCH_CUDA_ARCH_LIST entries) runs on a GPU of ``capability``
    (major, minor): a cubin runs on its own major version at the same or a higher minor one (8.0 on
    8.6 and 8.9; an arch-specific "9.0a" only on 9.0); PTX ("+PTX") is compiled by the driver for
    its own capability and every later one."""
    major, minor = capability
    for entry in archs:
        built = _capability(entry)
        specific = entry.split("+")[0].endswith(("a", "f"))
        if built == (major, minor) or (not specific and built[0] == major and built[1] <= minor):
            return True
        if entry.endswith("+PTX") and built <= (major, minor):
            return True
    return False


def cuda_arch_error(archs, capability, name="the GPU"):
    """None when a build for ``archs`` runs on ``capability``; else the message that says which GPU
    is not covered and how to rebuild for it."""
    if cuda_arch_covers(archs, capability):
        return None
    arch = f"{capability[0]}.{capability[1]}"
    return (f"fastladder: the compiled extension has no CUDA kernels for {name} (compute capability {arch}): "
            f"it was built for TORCH_CUDA_ARCH_LIST={';'.join(archs) or '(none)'}. Rebuild it for this GPU "
            f"from the fastladder source folder with:\n    TORCH_CUDA_ARCH_LIST={arch} {REBUILD_COMMAND}\n"
            "(or leave TORCH_CUDA_ARCH_LIST unset: the build then targets the GPUs it sees)")


def check_cuda_devices():
    """Raises RuntimeError (cuda_arch_error's message) when a visible GPU is not covered by the build.

    Runs when torch initializes CUDA (the first CUDA use; right away if that happened before
    fastladder was imported), so that an op never fails later with "no kernel image is available"."""
    archs = parse_cuda_archs(_C.build_info()["cuda_archs"])
    if not archs:
        return  # a CPU-only build: there are no CUDA kernels to check
    for index in range(torch.cuda.device_count()):
        problem = cuda_arch_error(archs, torch.cuda.get_device_capability(index),
                                  f"{torch.cuda.get_device_name(index)} (cuda:{index})")
        if problem:
            raise RuntimeError(problem)


if torch.version.cuda is not None:
    # torch's hook for work at CUDA initialization: nothing here initializes CUDA itself (which
    # would break forked DataLoader workers), and CPU-only users never pay for it
    torch.cuda._lazy_call(check_cuda_devices)


def build_info():
    """What this build of fastladder._C contains.

    Returns:
        dict with ``with_cuda`` (bool: CUDA kernels compiled in), ``cuda_version`` (str or None),
        ``cuda_archs`` (list of the TORCH_CUDA_ARCH_LIST entries compiled in, e.g.
        ``["8.0", "8.6", "8.9", "9.0+PTX"]``; empty without CUDA kernels), ``torch_version`` (the
        torch it was compiled against), ``source_hash`` (fingerprint of csrc/), and
        ``cuda_available`` (whether torch sees a CUDA device now).
    """
    info = dict(_C.build_info())
    info["cuda_archs"] = parse_cuda_archs(info.get("cuda_archs", ""))
    info["cuda_available"] = torch.cuda.is_available()
    return info

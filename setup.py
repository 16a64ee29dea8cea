"""Build fastladder and its compiled extension fastladder._C.

The CPU kernels are always built. The CUDA kernels are built when torch is a CUDA build and nvcc
is found (CUDA_HOME, default /usr/local/cuda); FASTLADDER_CUDA=0|1 forces either way.
TORCH_CUDA_ARCH_LIST defaults to 9.0 (Hopper).

torch must already be installed: build with `pip install --no-build-isolation .`.
"""
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

# torch.utils.cpp_extension reads CUDA_HOME when it is imported: set the default before that.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:  # an isolated build environment, or torch not installed at all
    sys.stderr.write(
        "\nfastladder: PyTorch must be installed before fastladder is built, and the build must see it.\n"
        "  1. pip install torch            (fastladder is tested with torch==2.14.1)\n"
        "  2. pip install --no-build-isolation .\n"
        "Without --no-build-isolation pip builds in an empty environment that has no torch.\n\n"
    )
    sys.exit(1)

ROOT = os.path.dirname(os.path.abspath(__file__))


def source_hash():
    """The fingerprint compiled into _C (fastladder/_build_hash.py; loaded by path: torch-free)."""
    spec = importlib.util.spec_from_file_location("_build_hash", os.path.join(ROOT, "fastladder", "_build_hash.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(ROOT)


def write_hash_header():
    """Writes build/generated/fastladder_build_hash.h (only fastladder.cpp includes it, so a source
    change recompiles that one file, not every file as a -D flag would). Returns its folder."""
    folder = os.path.join(ROOT, "build", "generated")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "fastladder_build_hash.h")
    text = f'#pragma once\n#define FASTLADDER_SOURCE_HASH "{source_hash()}"\n'
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return folder


def want_cuda():
    forced = os.environ.get("FASTLADDER_CUDA")
    if forced is not None:
        if forced not in ("0", "1"):
            sys.exit(f"fastladder: FASTLADDER_CUDA must be 0 or 1, got {forced!r}")
        return forced == "1"
    if torch.version.cuda is None:
        return False
    return os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))


def extension():
    with_cuda = want_cuda()
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc"), write_hash_header()]
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    # -ffp-contract=off: the CPU kernels round as written (x * scale, then + shift), also in their
    # AVX-512 clones, where the compiler would otherwise fuse the two into one FMA
    extra = {"cxx": ["-O3", "-fopenmp", "-fvisibility=hidden", "-ffp-contract=off"]}
    if with_cuda:
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
        define_macros.append(("FASTLADDER_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension("fastladder._C", sources, include_dirs=include_dirs,
                             define_macros=define_macros, extra_compile_args=extra,
                             extra_link_args=["-fopenmp"])
    return CppExtension("fastladder._C", sources, include_dirs=include_dirs,
                        define_macros=define_macros, extra_compile_args=extra, extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["fastladder", "fastladder.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""Build fastladder and its compiled extension fastladder._C.

The CPU kernels are always built. The CUDA kernels are built when torch is a CUDA build and nvcc
is found (CUDA_HOME, default /usr/local/cuda); FASTLADDER_CUDA=0|1 forces either way.
TORCH_CUDA_ARCH_LIST, when unset: the compute capabilities of the visible GPUs (as torch detects
them), or with no GPU visible a portable list (PORTABLE_CUDA_ARCHS: A100, RTX 30, RTX 40 / L4 / L40,
H100) plus PTX of the newest for later GPUs. fastladder.build_info()["cuda_archs"] lists what a
build holds.

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
# Ampere (A100: 8.0; RTX 30, A10, A40: 8.6), Ada (RTX 40, L4, L40: 8.9), Hopper (H100, H200: 9.0),
# and PTX of 9.0, which the driver compiles for newer GPUs.
PORTABLE_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def source_hash():
    """The fingerprint compiled into _C (fastladder/_build_hash.py; loaded by path: torch-free)."""
    spec = importlib.util.spec_from_file_location("_build_hash",
                                                  os.path.join(ROOT, "fastladder", "_build_hash.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(ROOT)


def cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST for this build: as set; else the visible GPUs' capabilities (torch's own
    detection: each distinct capability, PTX of the newest); else PORTABLE_CUDA_ARCHS."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = [f"{major}.{minor}" for major, minor in capabilities]
        archs[-1] += "+PTX"
        return ";".join(archs)
    return PORTABLE_CUDA_ARCHS


def write_hash_header(cuda_archs=""):
    """Writes build/generated/fastladder_build_hash.h: the source fingerprint and the CUDA arch list
    (only fastladder.cpp includes it, so a change recompiles that one file, not every file as a -D
    flag would). Returns its folder."""
    folder = os.path.join(ROOT, "build", "generated")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "fastladder_build_hash.h")
    text = (f'#pragma once\n#define FASTLADDER_SOURCE_HASH "{source_hash()}"\n'
            f'#define FASTLADDER_CUDA_ARCHS "{cuda_archs}"\n')
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
    cuda_archs = ""
    if with_cuda:
        # set explicitly, so that what torch compiles for is exactly what build_info reports
        cuda_archs = os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        print(f"fastladder: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={cuda_archs}", file=sys.stderr)
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc"), write_hash_header(cuda_archs)]
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


if __name__ == "__main__":  # (pip's build backend runs this file as __main__ too; tests import it)
    setup(
        packages=find_packages(include=["fastladder", "fastladder.*"]),
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )

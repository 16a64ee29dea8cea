// fastladder._C: owns the `fastladder` operator namespace and reports what was built.
// The operators themselves are registered by csrc/ops/*.cpp (schemas) and the cpu/ and cuda/
// kernel files (implementations); loading this module runs those registrations.
#include <torch/extension.h>

#include "ops/cpu/arena.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/vectorize.h"
#include "ops/winograd.h"

#ifdef FASTLADDER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

// Written by setup.py (a fingerprint of csrc/, so that an import can tell a stale build).
#if __has_include("fastladder_build_hash.h")
#include "fastladder_build_hash.h"
#else
#define FASTLADDER_SOURCE_HASH "unknown"
#endif
#ifndef FASTLADDER_CUDA_ARCHS
#define FASTLADDER_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastladder, m) {}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["source_hash"] = FASTLADDER_SOURCE_HASH;
  info["torch_version"] = TORCH_VERSION;
  // TORCH_CUDA_ARCH_LIST of the build ("8.0;8.6;8.9;9.0+PTX"), "" without CUDA kernels
  info["cuda_archs"] = FASTLADDER_CUDA_ARCHS;
#ifdef FASTLADDER_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
#else
  info["with_cuda"] = false;
  info["cuda_version"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fastladder's compiled operators (registered under torch.ops.fastladder)";
  module.def("build_info", &build_info, "What this build of fastladder._C contains");
  module.def("fast_bfloat16", &fastladder::ops::cpu_has_avx512_bf16,
             "Whether this CPU runs the bfloat16 kernels (conv3x3_winograd, bn_relu_conv1x1) at full speed");
  module.def("_force_portable_bfloat16", &fastladder::ops::force_portable_bfloat16,
             "Tests: run the bfloat16 products on their portable loops, as CPUs without AVX512_BF16 do");
  // The CPU inference arenas (csrc/ops/cpu/arena.h); fastladder.models.InferenceModel owns one.
  using fastladder::arena::Arena;
  pybind11::class_<Arena, std::shared_ptr<Arena>>(module, "Arena", "A CPU inference arena (csrc/ops/cpu/arena.h)")
      .def(pybind11::init<>())
      .def("enter", &Arena::enter)
      .def("exit", &Arena::exit)
      .def("close", &Arena::close)
      .def("stats", [](Arena& arena) {
        const fastladder::arena::Stats s = arena.stats();
        pybind11::dict d;
        d["live_bytes"] = s.live_bytes;
        d["idle_bytes"] = s.idle_bytes;
        d["peak_bytes"] = s.peak_bytes;
        d["idle_blocks"] = s.idle_blocks;
        d["reused"] = s.reused;
        d["fresh"] = s.fresh;
        return d;
      });
}

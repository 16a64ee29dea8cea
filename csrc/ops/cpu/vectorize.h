// Helpers for the CPU kernels' hot loops.
//
// The extension is compiled for the x86-64 baseline, where plain loops run on SSE2 at about half the
// speed of AVX-512, so hot loops are cloned for AVX-512 and AVX2 (FL_CPU_CLONES) and the loader picks
// the clone the CPU supports, as ATen dispatches its own kernels. The AVX-512 clone targets x86-64-v4
// (F, BW, DQ, VL): with F alone GCC vectorized the bfloat16 loops 256 bits wide (16-bit lanes need BW). setup.py and CMakeLists.txt compile
// with -ffp-contract=off, so every clone rounds each product before the sum, as the baseline does.
#pragma once

#include <cstdint>
#include <cstring>

#include "ops/common/macros.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FL_CPU_CLONES
#endif

namespace fastladder {
namespace ops {

// bfloat16 on its raw bits, converted as c10::BFloat16 converts (round to nearest even, every NaN to
// 0x7FC0): through c10::BFloat16 the scalar conversions keep the loops from vectorizing.
FL_INLINE float bf16_bits_to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

FL_INLINE uint16_t float_to_bf16_bits(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  const uint16_t rounded = static_cast<uint16_t>((word + (((word >> 16) & 1u) + 0x7FFFu)) >> 16);
  return value != value ? static_cast<uint16_t>(0x7FC0) : rounded;
}

}  // namespace ops
}  // namespace fastladder

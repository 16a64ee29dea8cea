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
#include <type_traits>

#include "ops/common/macros.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FL_CPU_CLONES
#endif

// Kernels written for AVX512_BF16 (its dot product and conversion instructions) carry FL_AVX512_BF16 and
// run only where cpu_has_avx512_bf16() says so; without GCC on x86-64 they are not compiled.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#define FL_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
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

// A value of a vectorized loop in its compute type (float64 for float64, else float32; bfloat16 as raw
// bits), and back.
FL_INLINE float to_compute(float v) { return v; }
FL_INLINE double to_compute(double v) { return v; }
FL_INLINE float to_compute(uint16_t bf16_bits) { return bf16_bits_to_float(bf16_bits); }
template <typename T>
FL_INLINE float to_compute(T v) {  // other reduced-precision types (c10::Half, c10::BFloat16): float32
  return static_cast<float>(v);
}

template <typename T, typename S>
FL_INLINE T from_compute(S v) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    return float_to_bf16_bits(v);
  } else {
    return static_cast<T>(v);
  }
}

inline bool cpu_has_avx512_bf16() {
#ifdef FL_AVX512_BF16
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

#ifdef FL_AVX512_BF16
// 16 bfloat16 values (the lanes of mask; the others read as +0) as float32
FL_AVX512_BF16 inline __m512 load_bf16x16(__mmask16 mask, const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
}

// 16 float32 values rounded to bfloat16 by the AVX512_BF16 conversion: to nearest even as
// float_to_bf16_bits, but subnormal results flush to zero and NaNs keep sign and payload.
FL_AVX512_BF16 inline void store_bf16x16(__mmask16 mask, uint16_t* p, __m512 x) {
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(x));
}

// The lanes of mask where store_bf16x16 and float_to_bf16_bits may differ (subnormal or NaN).
FL_AVX512_BF16 inline __mmask16 bf16x16_inexact_lanes(__mmask16 mask, __m512 x) {
  return _mm512_mask_fpclass_ps_mask(mask, x, 0x01 | 0x20 | 0x80);  // QNaN, subnormal, SNaN
}
#endif

}  // namespace ops
}  // namespace fastladder

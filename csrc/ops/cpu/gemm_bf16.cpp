// bfloat16 matrix products (ops/cpu/gemm_bf16.h).
#include "ops/cpu/gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "ops/cpu/vectorize.h"

namespace fastladder {
namespace ops {

namespace {

#define FL_R __restrict__

std::atomic<bool> force_portable{false};

FL_CPU_CLONES void interleave_rows(const uint16_t* FL_R row0, const uint16_t* FL_R row1, uint16_t* FL_R out,
                                   int64_t K) {
  for (int64_t k = 0; k < K; ++k) out[2 * k] = row0[k], out[2 * k + 1] = row1[k];
}

FL_CPU_CLONES void gemm_portable(const uint16_t* FL_R a, int64_t a_stride, const uint16_t* FL_R b, int64_t rows,
                                 int64_t pairs, int64_t K, float* FL_R c) {
  for (int64_t r = 0; r < rows; ++r) {
    float* FL_R out = c + r * K;
    for (int64_t k = 0; k < K; ++k) out[k] = 0;
    for (int64_t p = 0; p < pairs; ++p) {
      const float a0 = bf16_bits_to_float(a[r * a_stride + 2 * p]);
      const float a1 = bf16_bits_to_float(a[r * a_stride + 2 * p + 1]);
      const uint16_t* FL_R bp = b + p * K * 2;
      for (int64_t k = 0; k < K; ++k) {
        out[k] += a0 * bf16_bits_to_float(bp[2 * k]) + a1 * bf16_bits_to_float(bp[2 * k + 1]);
      }
    }
  }
}

FL_CPU_CLONES void bias_relu_round(const float* FL_R sums, const float* FL_R bias, bool relu, uint16_t* FL_R out,
                                   int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    float v = sums[k] + (bias ? bias[k] : 0.0f);
    if (relu) v = v < 0 ? 0.0f : v;
    out[k] = float_to_bf16_bits(v);
  }
}

#ifdef FL_AVX512_BF16

// R rows × 32 columns (two vectors of 16, masked at the end of K) of sums in registers, over all pairs;
// then either stored as float32 (c) or, with the bias and ReLU, rounded to bfloat16 (out).
template <int R, bool kBf16Out>
FL_AVX512_BF16 inline void dot_rows(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t K, int64_t pairs,
                                    __mmask16 mask0, __mmask16 mask1, float* c, const float* bias, bool relu,
                                    uint16_t* out, int64_t out_stride) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc0[r] = _mm512_setzero_ps(), acc1[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(mask0, b + p * K * 2);
    const __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(mask1, b + p * K * 2 + 32);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * a_stride + 2 * p, sizeof(pair));
      const __m512bh broadcast = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], broadcast, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], broadcast, b1);
    }
  }
  if constexpr (kBf16Out) {
    const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(mask0, bias) : _mm512_setzero_ps();
    const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(mask1, bias + 16) : _mm512_setzero_ps();
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512 v0 = _mm512_add_ps(acc0[r], bias0), v1 = _mm512_add_ps(acc1[r], bias1);
      if (relu) v0 = _mm512_max_ps(zero, v0), v1 = _mm512_max_ps(zero, v1);
      store_bf16x16(mask0, out + r * out_stride, v0);
      store_bf16x16(mask1, out + r * out_stride + 16, v1);
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(c + r * K, mask0, acc0[r]);
      _mm512_mask_storeu_ps(c + r * K + 16, mask1, acc1[r]);
    }
  }
}

constexpr int kDotRows = 12;  // 24 accumulators, 2 vectors of B and a broadcast: 27 of 32 registers

template <int R, bool kBf16Out>
FL_AVX512_BF16 inline void dot_rows_tail(int64_t rows, const uint16_t* a, int64_t a_stride, const uint16_t* b,
                                         int64_t K, int64_t pairs, __mmask16 mask0, __mmask16 mask1, float* c,
                                         const float* bias, bool relu, uint16_t* out, int64_t out_stride) {
  if constexpr (R > 0) {
    if (rows == R) {
      return dot_rows<R, kBf16Out>(a, a_stride, b, K, pairs, mask0, mask1, c, bias, relu, out, out_stride);
    }
    dot_rows_tail<R - 1, kBf16Out>(rows, a, a_stride, b, K, pairs, mask0, mask1, c, bias, relu, out, out_stride);
  }
}

template <bool kBf16Out>
FL_AVX512_BF16 void gemm_avx512(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t rows, int64_t pairs,
                                int64_t K, float* c, const float* bias, bool relu, uint16_t* out,
                                int64_t out_stride) {
  for (int64_t k0 = 0; k0 < K; k0 += 32) {
    const int64_t left = K - k0;
    const __mmask16 mask0 = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __mmask16 mask1 = left >= 32 ? 0xFFFF : left > 16 ? static_cast<__mmask16>((1u << (left - 16)) - 1) : 0;
    const float* bias_k = bias ? bias + k0 : nullptr;
    for (int64_t r = 0; r < rows; r += kDotRows) {
      const int64_t count = std::min<int64_t>(kDotRows, rows - r);
      float* c_rk = nullptr;
      uint16_t* out_rk = nullptr;
      if constexpr (kBf16Out) {
        out_rk = out + r * out_stride + k0;
      } else {
        c_rk = c + r * K + k0;
      }
      dot_rows_tail<kDotRows, kBf16Out>(count, a + r * a_stride, a_stride, b + k0 * 2, K, pairs, mask0, mask1, c_rk,
                                        bias_k, relu, out_rk, out_stride);
    }
  }
}
#endif

}  // namespace

void pack_bf16_pairs(const uint16_t* b, int64_t c_stride, int64_t k_stride, int64_t C, int64_t K, uint16_t* out) {
  std::vector<uint16_t> rows(2 * K);
  const std::vector<uint16_t> zeros(K, 0);
  for (int64_t c = 0; c < C; c += 2) {
    const uint16_t* row0 = b + c * c_stride;
    const uint16_t* row1 = c + 1 < C ? b + (c + 1) * c_stride : zeros.data();
    if (k_stride != 1) {  // gather the two rows first (a [K, C] weight read along C)
      for (int64_t k = 0; k < K; ++k) rows[k] = row0[k * k_stride];
      for (int64_t k = 0; k < K; ++k) rows[K + k] = c + 1 < C ? row1[k * k_stride] : 0;
      row0 = rows.data(), row1 = rows.data() + K;
    }
    interleave_rows(row0, row1, out + c * K, K);
  }
}

bool gemm_bf16_fast() { return cpu_has_avx512_bf16() && !force_portable.load(std::memory_order_relaxed); }

void force_portable_bfloat16(bool force) { force_portable.store(force); }

void gemm_bf16(const uint16_t* a, int64_t a_stride, const uint16_t* b_packed, int64_t rows, int64_t pairs, int64_t K,
               float* c) {
#ifdef FL_AVX512_BF16
  if (gemm_bf16_fast()) return gemm_avx512<false>(a, a_stride, b_packed, rows, pairs, K, c, nullptr, false, nullptr, 0);
#endif
  gemm_portable(a, a_stride, b_packed, rows, pairs, K, c);
}

void gemm_bf16_bias_relu(const uint16_t* a, int64_t a_stride, const uint16_t* b_packed, int64_t rows,
                         int64_t pairs, int64_t K, const float* bias, bool relu, uint16_t* out, int64_t out_stride) {
#ifdef FL_AVX512_BF16
  if (gemm_bf16_fast()) {
    return gemm_avx512<true>(a, a_stride, b_packed, rows, pairs, K, nullptr, bias, relu, out, out_stride);
  }
#endif
  std::vector<float> sums(K);
  for (int64_t r = 0; r < rows; ++r) {
    gemm_portable(a + r * a_stride, a_stride, b_packed, 1, pairs, K, sums.data());
    bias_relu_round(sums.data(), bias, relu, out + r * out_stride, K);
  }
}

}  // namespace ops
}  // namespace fastladder

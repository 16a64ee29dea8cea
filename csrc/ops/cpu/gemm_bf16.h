// bfloat16 matrix products with float32 sums, for the CPU kernels that multiply bfloat16 tiles
// (conv3x3_winograd's F(2×2, 3×3), bn_relu_conv1x1): C[r, k] = Σ_c A[r, c] B[c, k].
//
// A is [rows, 2·pairs] bfloat16 (row stride a_stride, an even channel count: odd ones padded with a zero
// channel). B is packed in pairs of input channels, [pairs, K, 2] (B[c, k] at (c / 2, k, c % 2)): the
// layout of the AVX512_BF16 dot product, which adds the two products of a pair to a float32 sum. Where
// the CPU has AVX512_BF16 the products run on it (12 rows × 32 columns of sums in registers, at the
// instruction's throughput); elsewhere on a portable loop with the same float32 sums in another order.
#pragma once

#include <cstdint>

namespace fastladder {
namespace ops {

// B[c, k] = b[c · c_stride + k · k_stride] for c < C (a zero row for the pad channel of an odd C), packed
// into out [(C + 1) / 2, K, 2].
void pack_bf16_pairs(const uint16_t* b, int64_t c_stride, int64_t k_stride, int64_t C, int64_t K, uint16_t* out);

// c [rows, K] float32 (row stride K) = A @ B.
void gemm_bf16(const uint16_t* a, int64_t a_stride, const uint16_t* b_packed, int64_t rows, int64_t pairs,
               int64_t K, float* c);

// out [rows, K] bfloat16 (row stride out_stride) = A @ B (+ bias[k]) (then ReLU), each sum rounded once
// to nearest even (on AVX512_BF16 a subnormal result flushes to zero).
void gemm_bf16_bias_relu(const uint16_t* a, int64_t a_stride, const uint16_t* b_packed, int64_t rows,
                         int64_t pairs, int64_t K, const float* bias, bool relu, uint16_t* out, int64_t out_stride);

// Whether the AVX512_BF16 path runs (the CPU has it, and no test forced the portable loop).
bool gemm_bf16_fast();

// Tests: run the portable loops even where AVX512_BF16 is there (what other CPUs run).
void force_portable_bfloat16(bool force);

}  // namespace ops
}  // namespace fastladder

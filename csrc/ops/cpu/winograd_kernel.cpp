// CPU kernel of fastladder::conv3x3_winograd, F(4×4, 3×3) and F(2×2, 3×3) (ops/winograd.h).
//
// The output is cut into blocks of tiles along one tile row. A thread takes whole blocks and, for each:
// (1) transforms the block's α×α input patches into V [α², tiles, C_in]; (2) multiplies M = V @ U for
// the α² tile positions; (3) transforms M back into output tiles, adds the bias, applies the ReLU and
// writes them. A block's V and M stay in the core's cache through the three steps. The transforms run
// along the channels, which are adjacent in memory (x is read as NHWC), so they vectorize.
//
// float32 and float64 multiply with ATen's bmm (single-threaded inside the parallel region). bfloat16
// (F(2×2) only) keeps V and U in bfloat16 and M in float32: the products run on AVX512_BF16 dot
// products where the CPU has them (cpu/gemm_bf16.h), else on a portable loop with the same sums.
// Its transforms compute in float32 and round once, on the way into V and into the output.
//
// F(4×4, 3×3)
//   Input transform Bᵀ (along x, then along y)            Output transform Aᵀ (likewise)
//   [ 4  0 -5  0  1  0 ]                                   [ 1  1  1  1  1  0 ]
//   [ 0 -4 -4  1  1  0 ]                                   [ 0  1 -1  2 -2  0 ]
//   [ 0  4 -4 -1  1  0 ]                                   [ 0  1  1  4  4  0 ]
//   [ 0 -2 -1  2  1  0 ]                                   [ 0  1 -1  8 -8  1 ]
//   [ 0  2 -1 -2  1  0 ]
//   [ 0  4  0 -5  0  1 ]
// F(2×2, 3×3)
//   Bᵀ                  Aᵀ
//   [ 1  0 -1  0 ]      [ 1  1  1  0 ]
//   [ 0  1  1  0 ]      [ 0  1 -1 -1 ]
//   [ 0 -1  1  0 ]
//   [ 0  1  0 -1 ]
// The filter transforms G are in ops/winograd.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/bn_relu.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/vectorize.h"
#include "ops/winograd.h"

namespace fastladder {
namespace ops {

namespace {

#define FL_R __restrict__
#define FL_ALWAYS_INLINE __attribute__((always_inline)) inline
#define FL_SIX(T, p) T* FL_R p##0, T* FL_R p##1, T* FL_R p##2, T* FL_R p##3, T* FL_R p##4, T* FL_R p##5
#define FL_FOUR(T, p) T* FL_R p##0, T* FL_R p##1, T* FL_R p##2, T* FL_R p##3
#define FL_TWO(T, p) T* FL_R p##0, T* FL_R p##1

// bfloat16 travels as its raw bits (uint16_t) through the transforms, so that the loops vectorize.
using bf16_bits = uint16_t;

// The transforms compute in float64 for float64 data, else in float32.
template <typename T>
using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// --- F(4×4, 3×3) -----------------------------------------------------------------------------------

// o = Bᵀ a, for n values of six streams
template <typename In, typename Out>
FL_ALWAYS_INLINE void input4_body(FL_SIX(const In, a), FL_SIX(Out, o), int64_t n) {
  using T = compute_t<In>;
  for (int64_t c = 0; c < n; ++c) {
    const T d0 = to_compute(a0[c]), d1 = to_compute(a1[c]), d2 = to_compute(a2[c]), d3 = to_compute(a3[c]),
            d4 = to_compute(a4[c]), d5 = to_compute(a5[c]);
    o0[c] = from_compute<Out>(T(4) * d0 - T(5) * d2 + d4);
    o1[c] = from_compute<Out>(d3 + d4 - T(4) * (d1 + d2));
    o2[c] = from_compute<Out>(T(4) * (d1 - d2) + d4 - d3);
    o3[c] = from_compute<Out>(T(2) * (d3 - d1) + d4 - d2);
    o4[c] = from_compute<Out>(T(2) * (d1 - d3) + d4 - d2);
    o5[c] = from_compute<Out>(T(4) * d1 - T(5) * d3 + d5);
  }
}

// o = Aᵀ a (+ bias, then ReLU), for n values of six streams
template <bool kBias, bool kRelu, typename In, typename Out>
FL_ALWAYS_INLINE void output4_loop(FL_SIX(const In, a), FL_FOUR(Out, o), const compute_t<In>* FL_R bias, int64_t n) {
  using T = compute_t<In>;
  for (int64_t k = 0; k < n; ++k) {
    const T d0 = to_compute(a0[k]), d1 = to_compute(a1[k]), d2 = to_compute(a2[k]), d3 = to_compute(a3[k]),
            d4 = to_compute(a4[k]), d5 = to_compute(a5[k]);
    const T s12 = d1 + d2, m12 = d1 - d2, s34 = d3 + d4, m34 = d3 - d4;
    T y0 = d0 + s12 + s34, y1 = m12 + T(2) * m34, y2 = s12 + T(4) * s34, y3 = m12 + T(8) * m34 + d5;
    if constexpr (kBias) {
      const T b = bias[k];
      y0 += b, y1 += b, y2 += b, y3 += b;
    }
    if constexpr (kRelu) {  // NaN passes, as in torch.relu
      y0 = y0 < 0 ? T(0) : y0, y1 = y1 < 0 ? T(0) : y1, y2 = y2 < 0 ? T(0) : y2, y3 = y3 < 0 ? T(0) : y3;
    }
    o0[k] = from_compute<Out>(y0), o1[k] = from_compute<Out>(y1);
    o2[k] = from_compute<Out>(y2), o3[k] = from_compute<Out>(y3);
  }
}

// The bias and ReLU branches taken out of the loop, which then vectorizes.
template <typename In, typename Out>
FL_ALWAYS_INLINE void output4_body(FL_SIX(const In, a), FL_FOUR(Out, o), const compute_t<In>* FL_R bias, bool relu,
                                   int64_t n) {
  if (bias && relu) return output4_loop<true, true>(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, n);
  if (bias) return output4_loop<true, false>(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, n);
  if (relu) return output4_loop<false, true>(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, n);
  output4_loop<false, false>(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, n);
}

// --- F(2×2, 3×3) -----------------------------------------------------------------------------------

// V = Bᵀ d B for a whole 4×4 patch, both directions in registers: row i of the patch starts at r_i, its
// pixels sx apart; V's 16 positions are vs apart from v. For n channels.
template <typename In, typename Out>
FL_ALWAYS_INLINE void input2_patch_body(const In* FL_R r0, const In* FL_R r1, const In* FL_R r2, const In* FL_R r3,
                                        int64_t sx, Out* FL_R v, int64_t vs, int64_t n) {
  using T = compute_t<In>;
  // The 16 stores of an iteration go to distinct streams of v (vs ≥ n apart): no dependence between
  // iterations, which GCC cannot prove for a runtime stride.
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const In* rows[4] = {r0, r1, r2, r3};
    T a[4][4];
    for (int i = 0; i < 4; ++i) {  // along x
      const T d0 = to_compute(rows[i][c]), d1 = to_compute(rows[i][sx + c]), d2 = to_compute(rows[i][2 * sx + c]),
              d3 = to_compute(rows[i][3 * sx + c]);
      a[i][0] = d0 - d2, a[i][1] = d1 + d2, a[i][2] = d2 - d1, a[i][3] = d1 - d3;
    }
    for (int j = 0; j < 4; ++j) {  // along y
      v[j * vs + c] = from_compute<Out>(a[0][j] - a[2][j]);
      v[(4 + j) * vs + c] = from_compute<Out>(a[1][j] + a[2][j]);
      v[(8 + j) * vs + c] = from_compute<Out>(a[2][j] - a[1][j]);
      v[(12 + j) * vs + c] = from_compute<Out>(a[1][j] - a[3][j]);
    }
  }
}

// o = Aᵀ a (+ bias, then ReLU), for n values of four streams
template <bool kBias, bool kRelu, typename In, typename Out>
FL_ALWAYS_INLINE void output2_loop(FL_FOUR(const In, a), FL_TWO(Out, o), const compute_t<In>* FL_R bias, int64_t n) {
  using T = compute_t<In>;
  for (int64_t k = 0; k < n; ++k) {
    const T d0 = to_compute(a0[k]), d1 = to_compute(a1[k]), d2 = to_compute(a2[k]), d3 = to_compute(a3[k]);
    T y0 = d0 + d1 + d2, y1 = d1 - d2 - d3;
    if constexpr (kBias) {
      const T b = bias[k];
      y0 += b, y1 += b;
    }
    if constexpr (kRelu) {  // NaN passes, as in torch.relu
      y0 = y0 < 0 ? T(0) : y0, y1 = y1 < 0 ? T(0) : y1;
    }
    o0[k] = from_compute<Out>(y0), o1[k] = from_compute<Out>(y1);
  }
}

template <typename In, typename Out>
FL_ALWAYS_INLINE void output2_body(FL_FOUR(const In, a), FL_TWO(Out, o), const compute_t<In>* FL_R bias, bool relu,
                                   int64_t n) {
  if (bias && relu) return output2_loop<true, true>(a0, a1, a2, a3, o0, o1, bias, n);
  if (bias) return output2_loop<true, false>(a0, a1, a2, a3, o0, o1, bias, n);
  if (relu) return output2_loop<false, true>(a0, a1, a2, a3, o0, o1, bias, n);
  output2_loop<false, false>(a0, a1, a2, a3, o0, o1, bias, n);
}

// The float32 and bfloat16 instances cloned per ISA; float64 runs the templates as they are.
FL_CPU_CLONES void input4_f32(FL_SIX(const float, a), FL_SIX(float, o), int64_t n) {
  input4_body(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, o4, o5, n);
}
FL_CPU_CLONES void output4_f32(FL_SIX(const float, a), FL_FOUR(float, o), const float* FL_R bias, bool relu,
                               int64_t n) {
  output4_body(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, relu, n);
}
FL_CPU_CLONES void input2_patch_f32(FL_FOUR(const float, r), int64_t sx, float* FL_R v, int64_t vs, int64_t n) {
  input2_patch_body(r0, r1, r2, r3, sx, v, vs, n);
}
FL_CPU_CLONES void input2_patch_bf16(FL_FOUR(const bf16_bits, r), int64_t sx, bf16_bits* FL_R v, int64_t vs,
                                     int64_t n) {
  input2_patch_body(r0, r1, r2, r3, sx, v, vs, n);
}
FL_CPU_CLONES void output2_f32(FL_FOUR(const float, a), FL_TWO(float, o), const float* FL_R bias, bool relu,
                               int64_t n) {
  output2_body(a0, a1, a2, a3, o0, o1, bias, relu, n);
}
FL_CPU_CLONES void output2_f32_bf16(FL_FOUR(const float, a), FL_TWO(bf16_bits, o), const float* FL_R bias,
                                    bool relu, int64_t n) {
  output2_body(a0, a1, a2, a3, o0, o1, bias, relu, n);
}

// One transform step over α streams of n channels: the cloned instance where there is one.
template <typename In, typename Out>
void input4_transform(const In* const* a, Out* const* o, int64_t n) {
  if constexpr (std::is_same_v<In, float> && std::is_same_v<Out, float>) {
    input4_f32(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], o[4], o[5], n);
  } else {
    input4_body(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], o[4], o[5], n);
  }
}

template <int64_t A, typename In, typename Out>
void output_transform(const In* const* a, Out* const* o, const compute_t<In>* bias, bool relu, int64_t n) {
  if constexpr (A == 6) {
    if constexpr (std::is_same_v<In, float> && std::is_same_v<Out, float>) {
      output4_f32(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], bias, relu, n);
    } else {
      output4_body(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], bias, relu, n);
    }
  } else if constexpr (std::is_same_v<In, float> && std::is_same_v<Out, float>) {
    output2_f32(a[0], a[1], a[2], a[3], o[0], o[1], bias, relu, n);
  } else if constexpr (std::is_same_v<Out, bf16_bits>) {
    output2_f32_bf16(a[0], a[1], a[2], a[3], o[0], o[1], bias, relu, n);
  } else {
    output2_body(a[0], a[1], a[2], a[3], o[0], o[1], bias, relu, n);
  }
}

#ifdef FL_AVX512_BF16
// input2_patch_body for bfloat16, 16 channels a step, rounding V with the AVX512_BF16 conversion (to
// nearest even; subnormal results flush to zero, which only V's rounding sees, never the output).
FL_AVX512_BF16 void input2_patch_avx512(const bf16_bits* r0, const bf16_bits* r1, const bf16_bits* r2,
                                        const bf16_bits* r3, int64_t sx, bf16_bits* v, int64_t vs, int64_t n) {
  const bf16_bits* rows[4] = {r0, r1, r2, r3};
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mask = n - c >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - c)) - 1);
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // along x
      const __m512 d0 = load_bf16x16(mask, rows[i] + c), d1 = load_bf16x16(mask, rows[i] + sx + c),
                   d2 = load_bf16x16(mask, rows[i] + 2 * sx + c), d3 = load_bf16x16(mask, rows[i] + 3 * sx + c);
      a[i][0] = _mm512_sub_ps(d0, d2), a[i][1] = _mm512_add_ps(d1, d2), a[i][2] = _mm512_sub_ps(d2, d1),
      a[i][3] = _mm512_sub_ps(d1, d3);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {  // along y
      store_bf16x16(mask, v + j * vs + c, _mm512_sub_ps(a[0][j], a[2][j]));
      store_bf16x16(mask, v + (4 + j) * vs + c, _mm512_add_ps(a[1][j], a[2][j]));
      store_bf16x16(mask, v + (8 + j) * vs + c, _mm512_sub_ps(a[2][j], a[1][j]));
      store_bf16x16(mask, v + (12 + j) * vs + c, _mm512_sub_ps(a[1][j], a[3][j]));
    }
  }
}
#endif

template <typename T>
void input2_patch(const T* const* r, int64_t sx, T* v, int64_t vs, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    input2_patch_f32(r[0], r[1], r[2], r[3], sx, v, vs, n);
  } else if constexpr (std::is_same_v<T, bf16_bits>) {
#ifdef FL_AVX512_BF16
    if (gemm_bf16_fast()) return input2_patch_avx512(r[0], r[1], r[2], r[3], sx, v, vs, n);
#endif
    input2_patch_bf16(r[0], r[1], r[2], r[3], sx, v, vs, n);
  } else {
    input2_patch_body(r[0], r[1], r[2], r[3], sx, v, vs, n);
  }
}

// --- the convolution -----------------------------------------------------------------------------

// Tiles per block (along one tile row). F(4×4): 32 was fastest for 128- and 256-channel inputs on the
// 2-core build machine (16 and 64 within 10%); fewer tiles per matrix product cost more per call, more
// leave the cache. F(2×2) covers a quarter of the pixels per tile, so its blocks hold more tiles.
template <int64_t A>
constexpr int64_t kBlockTiles = A == 6 ? 32 : 96;
constexpr int64_t kLinePad = 64;  // bytes

// scalar_t: x's and the output's element type (bf16_bits for bfloat16); the V and U elements are the
// same; M is compute_t<scalar_t>.
template <int64_t A, typename scalar_t>
void conv3x3_winograd_impl(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const WinogradShape& s, bool relu, at::Tensor& out) {
  using acc_t = compute_t<scalar_t>;
  constexpr bool kBf16 = std::is_same_v<scalar_t, bf16_bits>;
  constexpr int64_t P = A * A, T = A - 2;
  const int64_t C = s.in_channels, K = s.out_channels;
  // bfloat16 pairs the input channels: V's rows and U are padded with a zero channel to an even count.
  const int64_t Cv = kBf16 ? (C + 1) / 2 * 2 : C;
  const int64_t tiles_h = (s.out_height + T - 1) / T, tiles_w = (s.out_width + T - 1) / T;
  const int64_t block = std::min(kBlockTiles<A>, tiles_w), blocks_w = (tiles_w + block - 1) / block;
  std::vector<acc_t> bias_values;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor b = bias->to(kBf16 ? at::kFloat : x.scalar_type()).contiguous();
    bias_values.assign(b.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>() + K);
  }
  const acc_t* bias_ptr = bias_values.empty() ? nullptr : bias_values.data();
  const auto* xp = static_cast<const scalar_t*>(x.const_data_ptr());
  auto* op = static_cast<scalar_t*>(out.data_ptr());
  const int64_t sn = x.stride(0), sy = x.stride(2), sx = x.stride(3);
  const std::vector<scalar_t> zeros(std::max<int64_t>(C, 1), scalar_t(0));  // the zero padding (+0.0)
  // bfloat16: U in pairs of input channels, [P, Cv / 2, K, 2], repacked every call (a 256 → 128 filter:
  // 1 MB) into a buffer the calling thread keeps, which spares the fresh memory's page faults.
  static thread_local std::vector<bf16_bits> packed;
  if constexpr (kBf16) {
    if (packed.size() < static_cast<size_t>(P * Cv * K)) packed.resize(P * Cv * K);
    const auto* u = static_cast<const bf16_bits*>(weight.const_data_ptr());
    for (int64_t p = 0; p < P; ++p) pack_bf16_pairs(u + p * C * K, K, 1, C, K, packed.data() + p * Cv * K);
  }
  const bf16_bits* packed_u = packed.data();

  at::parallel_for(0, s.batch * tiles_h * blocks_w, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> v(P * (block * Cv + kLinePad), scalar_t(0));
    std::vector<acc_t> m(P * (block * K + kLinePad)), rows(A == 6 ? P * C : 0), cols(A * T * K);
    std::vector<scalar_t> patch(A == 4 ? P * C : 0);  // F(2×2): a border tile's zero-padded patch
    std::vector<scalar_t> spill(T * K);  // output rows below the image
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (tiles_h * blocks_w), ty = task / blocks_w % tiles_h, tx0 = task % blocks_w * block;
      const int64_t count = std::min(block, tiles_w - tx0);
      // V [P, tiles, Cv] and M [P, tiles, K]. In bfloat16 their positions are a cache line further apart
      // than the tiles fill: at a multiple of 4 kB (96 tiles of 128 channels: 24 kB) the 16 streams that
      // the transforms write and read would share one set of the L1 cache and evict each other.
      const int64_t v_tile = Cv, v_position = count * Cv + (kBf16 ? kLinePad / sizeof(scalar_t) : 0);
      const int64_t m_position = count * K + (kBf16 ? kLinePad / sizeof(acc_t) : 0);
      // (1) V[(i, j), t, :] = (Bᵀ d B)[i, j] for each tile t of the block
      for (int64_t t = 0; t < count; ++t) {
        const int64_t x0 = (tx0 + t) * T - s.pad_w, y0 = ty * T - s.pad_h;
        if constexpr (A == 4) {
          // F(2×2): the whole patch in one pass, read in place, or from a zero-padded copy at the border
          const scalar_t* r[A];
          int64_t step = sx;
          if (y0 >= 0 && y0 + A <= s.in_height && x0 >= 0 && x0 + A <= s.in_width) {
            for (int64_t i = 0; i < A; ++i) r[i] = xp + n * sn + (y0 + i) * sy + x0 * sx;
          } else {
            for (int64_t i = 0; i < A; ++i) {
              for (int64_t j = 0; j < A; ++j) {
                const int64_t y = y0 + i, x = x0 + j;
                const bool inside = y >= 0 && y < s.in_height && x >= 0 && x < s.in_width;
                std::copy_n(inside ? xp + n * sn + y * sy + x * sx : zeros.data(), C, patch.data() + (i * A + j) * C);
              }
              r[i] = patch.data() + i * A * C;
            }
            step = C;
          }
          input2_patch(r, step, v.data() + t * v_tile, v_position, C);
        } else {
          for (int64_t i = 0; i < A; ++i) {  // along x, row by row: rows[i, j, :]
            const int64_t y = y0 + i;
            const scalar_t* a[A];
            acc_t* o[A];
            for (int64_t j = 0; j < A; ++j) {
              const bool inside = y >= 0 && y < s.in_height && x0 + j >= 0 && x0 + j < s.in_width;
              a[j] = inside ? xp + n * sn + y * sy + (x0 + j) * sx : zeros.data();
              o[j] = rows.data() + (i * A + j) * C;
            }
            input4_transform(a, o, C);
          }
          for (int64_t j = 0; j < A; ++j) {  // along y, column by column
            const acc_t* a[A];
            scalar_t* o[A];
            for (int64_t i = 0; i < A; ++i) {
              a[i] = rows.data() + (i * A + j) * C;
              o[i] = v.data() + (i * A + j) * v_position + t * v_tile;
            }
            input4_transform(a, o, C);
          }
        }
      }
      // (2) M[p] = V[p] @ U[p]
      if constexpr (kBf16) {
        for (int64_t p = 0; p < P; ++p) {
          gemm_bf16(v.data() + p * v_position, v_tile, packed_u + p * Cv * K, count, Cv / 2, K,
                    m.data() + p * m_position);
        }
      } else {
        const auto options = weight.options();
        at::Tensor mm = at::from_blob(m.data(), {P, count, K}, options);
        at::bmm_out(mm, at::from_blob(v.data(), {P, count, C}, options), weight);
      }
      // (3) Y = Aᵀ M A, + bias, ReLU
      for (int64_t t = 0; t < count; ++t) {
        for (int64_t i = 0; i < A; ++i) {  // along x: cols[i, jo, :]
          const acc_t* a[A];
          acc_t* o[T];
          for (int64_t j = 0; j < A; ++j) a[j] = m.data() + (i * A + j) * m_position + t * K;
          for (int64_t jo = 0; jo < T; ++jo) o[jo] = cols.data() + (i * T + jo) * K;
          output_transform<A>(a, o, nullptr, false, K);
        }
        for (int64_t jo = 0; jo < T; ++jo) {  // along y, into the output pixels
          const int64_t xo = (tx0 + t) * T + jo;
          if (xo >= s.out_width) break;
          const acc_t* a[A];
          scalar_t* o[T];
          for (int64_t i = 0; i < A; ++i) a[i] = cols.data() + (i * T + jo) * K;
          for (int64_t io = 0; io < T; ++io) {
            const int64_t yo = ty * T + io;
            o[io] = yo < s.out_height ? op + ((n * s.out_height + yo) * s.out_width + xo) * K : spill.data() + io * K;
          }
          output_transform<A>(a, o, bias_ptr, relu, K);
        }
      }
    }
  });
}

template <typename scalar_t>
void conv3x3_winograd_dispatch(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const WinogradShape& s, bool relu, at::Tensor& out) {
  if (s.tile == 4) {
    conv3x3_winograd_impl<6, scalar_t>(x, weight, bias, s, relu, out);
  } else {
    conv3x3_winograd_impl<4, scalar_t>(x, weight, bias, s, relu, out);
  }
}

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef padding, bool relu) {
  const WinogradShape s = check_conv3x3_winograd(x_in, weight_in, bias, padding);
  // The kernel reads x as NHWC with any pixel strides: channels_last, or a channel slice of it, in place.
  const at::Tensor x = x_in.stride(1) == 1 || x_in.size(1) <= 1 ? x_in : x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty({s.batch, s.out_channels, s.out_height, s.out_width},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() > 0) {
    switch (x.scalar_type()) {
      case at::kFloat: conv3x3_winograd_dispatch<float>(x, weight, bias, s, relu, out); break;
      case at::kDouble: conv3x3_winograd_dispatch<double>(x, weight, bias, s, relu, out); break;
      case at::kBFloat16: conv3x3_winograd_impl<4, bf16_bits>(x, weight, bias, s, relu, out); break;
      default: TORCH_CHECK(false, "conv3x3_winograd: unexpected dtype ", x.scalar_type());
    }
  }
  return out.contiguous(bn_relu_output_format(x_in));
}

}  // namespace



}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("conv3x3_winograd", &fastladder::ops::conv3x3_winograd_cpu);
}

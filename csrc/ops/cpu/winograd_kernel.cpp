// CPU kernel of fastladder::conv3x3_winograd, F(4×4, 3×3) (ops/winograd.h).
//
// The output is cut into blocks of up to kBlockTiles tiles along one tile row. A thread takes whole
// blocks and, for each: (1) transforms the block's 6×6 input patches into V [36, tiles, C_in];
// (2) multiplies M = V @ U for the 36 tile positions (ATen's bmm, single-threaded inside the parallel
// region); (3) transforms M back into 4×4 output tiles, adds the bias, applies the ReLU and writes them.
// A block's V and M (about 600 kB for 128 input channels) stay in the core's cache through the three
// steps. The transforms run along the channels, which are adjacent in memory (x is read as NHWC), so
// they vectorize.
//
// Input transform Bᵀ (applied along x, then along y)   Output transform Aᵀ (likewise)
//   [ 4  0 -5  0  1  0 ]                                   [ 1  1  1  1  1  0 ]
//   [ 0 -4 -4  1  1  0 ]                                   [ 0  1 -1  2 -2  0 ]
//   [ 0  4 -4 -1  1  0 ]                                   [ 0  1  1  4  4  0 ]
//   [ 0 -2 -1  2  1  0 ]                                   [ 0  1 -1  8 -8  1 ]
//   [ 0  2 -1 -2  1  0 ]
//   [ 0  4  0 -5  0  1 ]
// The filter transform G is in ops/winograd.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/bn_relu.h"
#include "ops/cpu/vectorize.h"
#include "ops/winograd.h"

namespace fastladder {
namespace ops {

namespace {

// Tiles per block: 32 was fastest for 128- and 256-channel inputs on the 2-core build machine (16 and
// 64 within 10%); fewer tiles per matrix product cost more per call, more leave the cache.
constexpr int64_t kBlockTiles = 32;

#define FL_R __restrict__
#define FL_ALWAYS_INLINE __attribute__((always_inline)) inline
#define FL_SIX(T, p) T* FL_R p##0, T* FL_R p##1, T* FL_R p##2, T* FL_R p##3, T* FL_R p##4, T* FL_R p##5
#define FL_FOUR(T, p) T* FL_R p##0, T* FL_R p##1, T* FL_R p##2, T* FL_R p##3

// o = Bᵀ a, for n values of six streams
template <typename scalar_t>
FL_ALWAYS_INLINE void input_body(FL_SIX(const scalar_t, a), FL_SIX(scalar_t, o), int64_t n) {
  using T = scalar_t;
  for (int64_t c = 0; c < n; ++c) {
    const T d0 = a0[c], d1 = a1[c], d2 = a2[c], d3 = a3[c], d4 = a4[c], d5 = a5[c];
    o0[c] = T(4) * d0 - T(5) * d2 + d4;
    o1[c] = d3 + d4 - T(4) * (d1 + d2);
    o2[c] = T(4) * (d1 - d2) + d4 - d3;
    o3[c] = T(2) * (d3 - d1) + d4 - d2;
    o4[c] = T(2) * (d1 - d3) + d4 - d2;
    o5[c] = T(4) * d1 - T(5) * d3 + d5;
  }
}

// o = Aᵀ a (+ bias, then ReLU, when bias is given), for n values of six streams
template <typename scalar_t>
FL_ALWAYS_INLINE void output_body(FL_SIX(const scalar_t, a), FL_FOUR(scalar_t, o), const scalar_t* FL_R bias,
                                  bool relu, int64_t n) {
  using T = scalar_t;
  for (int64_t k = 0; k < n; ++k) {
    const T d0 = a0[k], d1 = a1[k], d2 = a2[k], d3 = a3[k], d4 = a4[k], d5 = a5[k];
    const T s12 = d1 + d2, m12 = d1 - d2, s34 = d3 + d4, m34 = d3 - d4;
    T y0 = d0 + s12 + s34, y1 = m12 + T(2) * m34, y2 = s12 + T(4) * s34, y3 = m12 + T(8) * m34 + d5;
    if (bias) {
      const T b = bias[k];
      y0 += b, y1 += b, y2 += b, y3 += b;
    }
    if (relu) {  // NaN passes, as in torch.relu
      y0 = y0 < 0 ? T(0) : y0, y1 = y1 < 0 ? T(0) : y1, y2 = y2 < 0 ? T(0) : y2, y3 = y3 < 0 ? T(0) : y3;
    }
    o0[k] = y0, o1[k] = y1, o2[k] = y2, o3[k] = y3;
  }
}

// float32 (the dtype models run in) cloned per ISA; float64 runs the templates as they are.
FL_CPU_CLONES void input_f32(FL_SIX(const float, a), FL_SIX(float, o), int64_t n) {
  input_body(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, o4, o5, n);
}
FL_CPU_CLONES void output_f32(FL_SIX(const float, a), FL_FOUR(float, o), const float* FL_R bias, bool relu,
                              int64_t n) {
  output_body(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, bias, relu, n);
}

template <typename scalar_t>
void input_transform(const scalar_t* const* a, scalar_t* const* o, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    input_f32(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], o[4], o[5], n);
  } else {
    input_body(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], o[4], o[5], n);
  }
}

template <typename scalar_t>
void output_transform(const scalar_t* const* a, scalar_t* const* o, const scalar_t* bias, bool relu, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    output_f32(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], bias, relu, n);
  } else {
    output_body(a[0], a[1], a[2], a[3], a[4], a[5], o[0], o[1], o[2], o[3], bias, relu, n);
  }
}

template <typename scalar_t>
void conv3x3_winograd_impl(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const WinogradShape& s, bool relu, at::Tensor& out) {
  constexpr int64_t A = kWinogradAlpha, P = A * A, T = kWinogradTile;
  const int64_t C = s.in_channels, K = s.out_channels;
  const int64_t tiles_h = (s.out_height + T - 1) / T, tiles_w = (s.out_width + T - 1) / T;
  const int64_t block = std::min(kBlockTiles, tiles_w), blocks_w = (tiles_w + block - 1) / block;
  std::vector<scalar_t> bias_values;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor b = bias->to(x.scalar_type()).contiguous();
    bias_values.assign(b.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>() + K);
  }
  const scalar_t* bias_ptr = bias_values.empty() ? nullptr : bias_values.data();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t sn = x.stride(0), sy = x.stride(2), sx = x.stride(3);
  const std::vector<scalar_t> zeros(std::max<int64_t>(C, 1), scalar_t(0));  // the zero padding
  const auto options = weight.options();

  at::parallel_for(0, s.batch * tiles_h * blocks_w, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> v(P * block * C), m(P * block * K), rows(P * C), cols(A * T * K);
    std::vector<scalar_t> spill(T * K);  // output rows below the image
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (tiles_h * blocks_w), ty = task / blocks_w % tiles_h, tx0 = task % blocks_w * block;
      const int64_t count = std::min(block, tiles_w - tx0);
      // (1) V[(i, j), t, :] = (Bᵀ d B)[i, j] for each tile t of the block
      for (int64_t t = 0; t < count; ++t) {
        const int64_t x0 = (tx0 + t) * T - s.pad_w;
        for (int64_t i = 0; i < A; ++i) {  // along x, row by row: rows[i, j, :]
          const int64_t y = ty * T - s.pad_h + i;
          const scalar_t* a[A];
          scalar_t* o[A];
          for (int64_t j = 0; j < A; ++j) {
            const bool inside = y >= 0 && y < s.in_height && x0 + j >= 0 && x0 + j < s.in_width;
            a[j] = inside ? xp + n * sn + y * sy + (x0 + j) * sx : zeros.data();
            o[j] = rows.data() + (i * A + j) * C;
          }
          input_transform(a, o, C);
        }
        for (int64_t j = 0; j < A; ++j) {  // along y, column by column
          const scalar_t* a[A];
          scalar_t* o[A];
          for (int64_t i = 0; i < A; ++i) {
            a[i] = rows.data() + (i * A + j) * C;
            o[i] = v.data() + ((i * A + j) * count + t) * C;
          }
          input_transform(a, o, C);
        }
      }
      // (2) M[p] = V[p] @ U[p]
      at::Tensor mm = at::from_blob(m.data(), {P, count, K}, options);
      at::bmm_out(mm, at::from_blob(v.data(), {P, count, C}, options), weight);
      // (3) Y = Aᵀ M A, + bias, ReLU
      for (int64_t t = 0; t < count; ++t) {
        for (int64_t i = 0; i < A; ++i) {  // along x: cols[i, jo, :]
          const scalar_t* a[A];
          scalar_t* o[T];
          for (int64_t j = 0; j < A; ++j) a[j] = m.data() + ((i * A + j) * count + t) * K;
          for (int64_t jo = 0; jo < T; ++jo) o[jo] = cols.data() + (i * T + jo) * K;
          output_transform<scalar_t>(a, o, nullptr, false, K);
        }
        for (int64_t jo = 0; jo < T; ++jo) {  // along y, into the output pixels
          const int64_t xo = (tx0 + t) * T + jo;
          if (xo >= s.out_width) break;
          const scalar_t* a[A];
          scalar_t* o[T];
          for (int64_t i = 0; i < A; ++i) a[i] = cols.data() + (i * T + jo) * K;
          for (int64_t io = 0; io < T; ++io) {
            const int64_t yo = ty * T + io;
            o[io] = yo < s.out_height ? op + ((n * s.out_height + yo) * s.out_width + xo) * K : spill.data() + io * K;
          }
          output_transform<scalar_t>(a, o, bias_ptr, relu, K);
        }
      }
    }
  });
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
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd_cpu",
                               [&] { conv3x3_winograd_impl<scalar_t>(x, weight, bias, s, relu, out); });
  }
  return out.contiguous(bn_relu_output_format(x_in));
}

}  // namespace

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("conv3x3_winograd", &fastladder::ops::conv3x3_winograd_cpu);
}

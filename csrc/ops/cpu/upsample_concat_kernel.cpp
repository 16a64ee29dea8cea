// CPU kernels of fastladder::upsample_concat: index loops over rows; the arithmetic is in
// common/bilinear.h and common/affine.h, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "ops/common/affine.h"
#include "ops/common/bilinear.h"
#include "ops/cpu/vectorize.h"
#include "ops/upsample_concat.h"

namespace fastladder {
namespace ops {

namespace {

using common::AxisTap;

#define FL_ALWAYS_INLINE __attribute__((always_inline)) inline

// Per-channel affine parameters as acc_t arrays; identity when the op has none.
template <typename scalar_t, typename acc_t>
void affine_params(const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                   int64_t channels, std::vector<acc_t>& scale_out, std::vector<acc_t>& shift_out) {
  scale_out.assign(channels, acc_t(1));
  shift_out.assign(channels, acc_t(0));
  if (!scale.has_value() || !scale->defined()) return;
  const at::Tensor s = scale->contiguous(), b = shift->contiguous();
  const scalar_t* sp = s.data_ptr<scalar_t>();
  const scalar_t* bp = b.data_ptr<scalar_t>();
  for (int64_t c = 0; c < channels; ++c) {
    scale_out[c] = static_cast<acc_t>(sp[c]);
    shift_out[c] = static_cast<acc_t>(bp[c]);
  }
}

// ReLU over a run of outputs, as its own pass: in loops that gather (no vectorization) an inline
// ReLU compiles to a data-dependent branch, mispredicted half the time on real activations; this
// loop is contiguous and vectorizes to a blend.
template <typename scalar_t>
void relu_run(scalar_t* values, int64_t count) {
  for (int64_t k = 0; k < count; ++k) values[k] = common::relu_value(values[k]);
}

template <typename acc_t>
std::vector<AxisTap<acc_t>> axis_taps(int64_t in_size, int64_t out_size, bool align_corners) {
  const acc_t scale = common::bilinear_scale<acc_t>(in_size, out_size, align_corners);
  std::vector<AxisTap<acc_t>> taps(out_size);
  for (int64_t o = 0; o < out_size; ++o) taps[o] = common::bilinear_tap<acc_t>(o, in_size, out_size, scale, align_corners);
  return taps;
}

// All loops see the same view of the problem: element (n, c, y, x) of a tensor with `channels`
// channels lives at offset(n, c, y, x), in NCHW or NHWC order.
struct Layout {
  bool channels_last;
  int64_t height, width;
  int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t channels) const {
    return channels_last ? ((n * height + y) * width + x) * channels + c
                         : ((n * channels + c) * height + y) * width + x;
  }
};

template <typename scalar_t, typename acc_t>
acc_t upsampled(const scalar_t* low, const Layout& in, int64_t n, int64_t c, int64_t channels,
                const AxisTap<acc_t>& th, const AxisTap<acc_t>& tw) {
  return common::bilinear_combine<acc_t>(th, tw, static_cast<acc_t>(low[in.offset(n, c, th.i0, tw.i0, channels)]),
                                         static_cast<acc_t>(low[in.offset(n, c, th.i0, tw.i1, channels)]),
                                         static_cast<acc_t>(low[in.offset(n, c, th.i1, tw.i0, channels)]),
                                         static_cast<acc_t>(low[in.offset(n, c, th.i1, tw.i1, channels)]));
}

// Output rows [row_begin, row_begin + rows) of the full H (rows outside [0, H) are written as zeros:
// the zero padding a following 3×3 convolution needs at the image border).
struct RowWindow {
  int64_t begin;
  int64_t count;
};

// channels_last output from channels_last inputs: one output row (n, y) at a time, channels
// innermost (contiguous on both sides, so the channel loops vectorize).
template <typename scalar_t>
void forward_channels_last_out(const at::Tensor& low, const at::Tensor& skip, at::Tensor& out,
                               const UpsampleConcatShape& s, const std::vector<at::opmath_type<scalar_t>>& sc,
                               const std::vector<at::opmath_type<scalar_t>>& sh, bool relu, bool align_corners,
                               RowWindow window) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto htaps = axis_taps<acc_t>(s.low_height, s.height, align_corners);
  const auto wtaps = axis_taps<acc_t>(s.low_width, s.width, align_corners);
  const scalar_t* lp = low.data_ptr<scalar_t>();
  const scalar_t* sp = skip.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const Layout in{true, s.low_height, s.low_width};
  const Layout is{true, s.height, s.width};
  const Layout io{true, window.count, s.width};
  const bool concat = s.mode == JoinMode::kConcat;
  const int64_t Cl = s.low_channels, Cs = s.skip_channels, Co = s.out_channels, W = s.width;
  at::parallel_for(0, s.batch * window.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / window.count, y_out = row % window.count, y = window.begin + y_out;
      scalar_t* po_row = op + io.offset(n, 0, y_out, 0, Co);
      if (y < 0 || y >= s.height) {
        std::fill(po_row, po_row + W * Co, scalar_t(0));
        continue;
      }
      const AxisTap<acc_t>& th = htaps[y];
      for (int64_t x = 0; x < W; ++x) {
        const AxisTap<acc_t>& tw = wtaps[x];
        const scalar_t* p00 = lp + in.offset(n, 0, th.i0, tw.i0, Cl);
        const scalar_t* p01 = lp + in.offset(n, 0, th.i0, tw.i1, Cl);
        const scalar_t* p10 = lp + in.offset(n, 0, th.i1, tw.i0, Cl);
        const scalar_t* p11 = lp + in.offset(n, 0, th.i1, tw.i1, Cl);
        const scalar_t* ps = sp + is.offset(n, 0, y, x, Cs);
        scalar_t* po = po_row + x * Co;
        if (concat) {
          for (int64_t c = 0; c < Cl; ++c) {
            const acc_t v = common::bilinear_combine<acc_t>(th, tw, p00[c], p01[c], p10[c], p11[c]);
            po[c] = static_cast<scalar_t>(common::affine_relu<acc_t>(v, sc[c], sh[c], relu));
          }
          for (int64_t c = 0; c < Cs; ++c) {
            po[Cl + c] = static_cast<scalar_t>(
                common::affine_relu<acc_t>(static_cast<acc_t>(ps[c]), sc[Cl + c], sh[Cl + c], relu));
          }
        } else {
          for (int64_t c = 0; c < Co; ++c) {
            const acc_t v = common::bilinear_combine<acc_t>(th, tw, p00[c], p01[c], p10[c], p11[c]) +
                            static_cast<acc_t>(ps[c]);
            po[c] = static_cast<scalar_t>(common::affine_relu<acc_t>(v, sc[c], sh[c], relu));
          }
        }
      }
    }
  });
}

// channels_last output from NCHW inputs (the layout change for free): tiles of kTile pixels of one
// output row; per channel, the interpolation runs along contiguous input rows and the results go to
// the tile's channel slots. A tile (kTile × C_out values) stays in L1, so the strided stores are cheap.
template <typename scalar_t>
void forward_nchw_in_channels_last_out(const at::Tensor& low, const at::Tensor& skip, at::Tensor& out,
                                       const UpsampleConcatShape& s,
                                       const std::vector<at::opmath_type<scalar_t>>& sc,
                                       const std::vector<at::opmath_type<scalar_t>>& sh, bool relu,
                                       bool align_corners, RowWindow window) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kTile = 32;
  const auto htaps = axis_taps<acc_t>(s.low_height, s.height, align_corners);
  const auto wtaps = axis_taps<acc_t>(s.low_width, s.width, align_corners);
  const scalar_t* lp = low.data_ptr<scalar_t>();
  const scalar_t* sp = skip.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const Layout in{false, s.low_height, s.low_width};
  const Layout is{false, s.height, s.width};
  const Layout io{true, window.count, s.width};
  const bool concat = s.mode == JoinMode::kConcat;
  const int64_t Cl = s.low_channels, Cs = s.skip_channels, Co = s.out_channels, W = s.width;
  const int64_t tiles = (W + kTile - 1) / kTile;
  at::parallel_for(0, s.batch * window.count * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile = task % tiles, y_out = (task / tiles) % window.count, n = task / (tiles * window.count);
      const int64_t y = window.begin + y_out, x0 = tile * kTile, x1 = std::min(W, x0 + kTile);
      scalar_t* po = op + io.offset(n, 0, y_out, x0, Co);  // the tile: (x1 - x0) pixels × Co channels
      if (y < 0 || y >= s.height) {
        std::fill(po, po + (x1 - x0) * Co, scalar_t(0));
        continue;
      }
      const AxisTap<acc_t>& th = htaps[y];
      const int64_t low_to = concat ? Cl : Co;
      for (int64_t c = 0; c < low_to; ++c) {
        const scalar_t* r0 = lp + in.offset(n, c, th.i0, 0, Cl);
        const scalar_t* r1 = lp + in.offset(n, c, th.i1, 0, Cl);
        const scalar_t* ps = concat ? nullptr : sp + is.offset(n, c, y, 0, Cs);
        for (int64_t x = x0; x < x1; ++x) {
          const AxisTap<acc_t>& tw = wtaps[x];
          acc_t v = common::bilinear_combine<acc_t>(th, tw, r0[tw.i0], r0[tw.i1], r1[tw.i0], r1[tw.i1]);
          if (!concat) v += static_cast<acc_t>(ps[x]);
          po[(x - x0) * Co + c] = static_cast<scalar_t>(common::affine_relu<acc_t>(v, sc[c], sh[c], false));
        }
      }
      if (!concat) {
        if (relu) relu_run(po, (x1 - x0) * Co);
        continue;
      }
      for (int64_t c = 0; c < Cs; ++c) {
        const scalar_t* ps = sp + is.offset(n, c, y, 0, Cs);
        const acc_t a = sc[Cl + c], b = sh[Cl + c];
        for (int64_t x = x0; x < x1; ++x)
          po[(x - x0) * Co + Cl + c] =
              static_cast<scalar_t>(common::affine_relu<acc_t>(static_cast<acc_t>(ps[x]), a, b, false));
      }
      if (relu) relu_run(po, (x1 - x0) * Co);
    }
  });
}

// One NCHW output row from two source rows already interpolated along x (h0, h1: bilinear_combine's
// inner sums), then the optional skip term and the affine: contiguous, so it vectorizes (bfloat16 on its
// raw bits, vectorize.h). The expression order is bilinear_combine's, so the bits are the same.
template <typename T, typename acc_t>
FL_ALWAYS_INLINE void blend_row_body(const acc_t* __restrict__ h0, const acc_t* __restrict__ h1, acc_t l0, acc_t l1,
                                     const T* __restrict__ skip, acc_t a, acc_t b, T* __restrict__ out, int64_t n) {
  if (skip) {
    for (int64_t x = 0; x < n; ++x) {
      const acc_t v = common::mul_rn(l0, h0[x]) + common::mul_rn(l1, h1[x]) + to_compute(skip[x]);
      out[x] = from_compute<T>(common::affine_relu<acc_t>(v, a, b, false));
    }
  } else {
    for (int64_t x = 0; x < n; ++x) {
      const acc_t v = common::mul_rn(l0, h0[x]) + common::mul_rn(l1, h1[x]);
      out[x] = from_compute<T>(common::affine_relu<acc_t>(v, a, b, false));
    }
  }
}

FL_CPU_CLONES void blend_row_f32(const float* h0, const float* h1, float l0, float l1, const float* skip, float a,
                                 float b, float* out, int64_t n) {
  blend_row_body(h0, h1, l0, l1, skip, a, b, out, n);
}
FL_CPU_CLONES void blend_row_bf16(const float* h0, const float* h1, float l0, float l1, const uint16_t* skip, float a,
                                  float b, uint16_t* out, int64_t n) {
  blend_row_body(h0, h1, l0, l1, skip, a, b, out, n);
}

template <typename scalar_t, typename acc_t>
void blend_row(const acc_t* h0, const acc_t* h1, acc_t l0, acc_t l1, const scalar_t* skip, acc_t a, acc_t b,
               scalar_t* out, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    blend_row_f32(h0, h1, l0, l1, skip, a, b, out, n);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    blend_row_bf16(h0, h1, l0, l1, reinterpret_cast<const uint16_t*>(skip), a, b, reinterpret_cast<uint16_t*>(out), n);
  } else {
    blend_row_body(h0, h1, l0, l1, skip, a, b, out, n);
  }
}

// NCHW output from NCHW inputs: one output row (n, c, y) at a time, x innermost. A task's rows are
// consecutive rows of one or a few (n, c) planes; each source row is interpolated along x once into one
// of two cached rows, which every output row reading it blends (×4 upsampling: 4 output rows a source
// row), instead of once per output row.
template <typename scalar_t>
void forward_nchw_out(const at::Tensor& low, const at::Tensor& skip, at::Tensor& out, const UpsampleConcatShape& s,
                      const std::vector<at::opmath_type<scalar_t>>& sc,
                      const std::vector<at::opmath_type<scalar_t>>& sh, bool relu, bool align_corners,
                      RowWindow window) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto htaps = axis_taps<acc_t>(s.low_height, s.height, align_corners);
  const auto wtaps = axis_taps<acc_t>(s.low_width, s.width, align_corners);
  const scalar_t* lp = low.data_ptr<scalar_t>();
  const scalar_t* sp = skip.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const Layout in{false, s.low_height, s.low_width};
  const Layout is{false, s.height, s.width};
  const Layout io{false, window.count, s.width};
  const bool concat = s.mode == JoinMode::kConcat;
  const int64_t Cl = s.low_channels, Cs = s.skip_channels, Co = s.out_channels, W = s.width;
  at::parallel_for(0, s.batch * Co * window.count, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> cached[2] = {std::vector<acc_t>(W), std::vector<acc_t>(W)};
    int64_t cached_row[2] = {-1, -1};  // the low row (its offset) each holds
    int64_t older = 0;
    const auto along_x = [&](const scalar_t* row) -> const acc_t* {
      const int64_t key = row - lp;
      for (int64_t k = 0; k < 2; ++k) {
        if (cached_row[k] == key) return cached[k].data();
      }
      acc_t* h = cached[older].data();
      for (int64_t x = 0; x < W; ++x) {
        const AxisTap<acc_t>& tw = wtaps[x];
        h[x] = common::mul_rn(tw.l0, static_cast<acc_t>(row[tw.i0])) +
               common::mul_rn(tw.l1, static_cast<acc_t>(row[tw.i1]));
      }
      cached_row[older] = key;
      older = 1 - older;
      return h;
    };
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y_out = row % window.count, c = (row / window.count) % Co, n = row / (window.count * Co);
      const int64_t y = window.begin + y_out;
      scalar_t* po = op + io.offset(n, c, y_out, 0, Co);
      if (y < 0 || y >= s.height) {
        std::fill(po, po + W, scalar_t(0));
        continue;
      }
      const acc_t a = sc[c], b = sh[c];
      const bool from_low = !concat || c < Cl;
      const bool from_skip = !concat || c >= Cl;
      const scalar_t* ps = from_skip ? sp + is.offset(n, concat ? c - Cl : c, y, 0, Cs) : nullptr;
      if (!from_low) {
        for (int64_t x = 0; x < W; ++x) po[x] = static_cast<scalar_t>(common::affine_relu<acc_t>(ps[x], a, b, false));
        if (relu) relu_run(po, W);
        continue;
      }
      const AxisTap<acc_t>& th = htaps[y];
      const acc_t* h0 = along_x(lp + in.offset(n, c, th.i0, 0, Cl));
      const acc_t* h1 = along_x(lp + in.offset(n, c, th.i1, 0, Cl));
      blend_row<scalar_t, acc_t>(h0, h1, th.l0, th.l1, ps, a, b, po, W);
      if (relu) relu_run(po, W);
    }
  });
}

// Rows `window` of the result in the requested layout, from inputs in any layout.
// Rows `window` of the result into `out` (shaped and laid out by the caller), from inputs in any layout.
void forward_into(const at::Tensor& low_in, const at::Tensor& skip_in, const UpsampleConcatShape& s,
                  const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu,
                  bool align_corners, RowWindow window, bool channels_last_out, at::Tensor& out) {
  if (out.numel() == 0) return;
  // channels_last output reads NCHW or channels_last inputs in place; NCHW output reads NCHW
  const bool inputs_channels_last = channels_last_out && is_channels_last(skip_in);
  const at::MemoryFormat input_format =
      inputs_channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor low = low_in.contiguous(input_format), skip = skip_in.contiguous(input_format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, low.scalar_type(), "upsample_concat_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> sc, sh;
    affine_params<scalar_t, acc_t>(scale, shift, s.out_channels, sc, sh);
    if (!channels_last_out) {
      forward_nchw_out<scalar_t>(low, skip, out, s, sc, sh, relu, align_corners, window);
    } else if (inputs_channels_last) {
      forward_channels_last_out<scalar_t>(low, skip, out, s, sc, sh, relu, align_corners, window);
    } else {
      forward_nchw_in_channels_last_out<scalar_t>(low, skip, out, s, sc, sh, relu, align_corners, window);
    }
  });
}

at::Tensor forward(const at::Tensor& low, const at::Tensor& skip, const UpsampleConcatShape& s,
                   const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu,
                   bool align_corners, RowWindow window, bool channels_last_out) {
  const at::MemoryFormat format = channels_last_out ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({s.batch, s.out_channels, window.count, s.width}, skip.options().memory_format(format));
  forward_into(low, skip, s, scale, shift, relu, align_corners, window, channels_last_out, out);
  return out;
}

// Backward, pass 1 (over outputs): the gradient with respect to the pre-affine join x, split into its
// skip part (written to grad_skip) and its upsampled part (written to grad_up, [N, Cl, H, W]); with
// need_affine_grad also the per-row partial sums of d/dscale and d/dshift, reduced in a fixed order.
template <typename scalar_t>
void backward_join_kernel(const at::Tensor& grad_out, const at::Tensor& low, const at::Tensor& skip,
                          const UpsampleConcatShape& s, const c10::optional<at::Tensor>& scale,
                          const c10::optional<at::Tensor>& shift, bool relu, bool align_corners, bool channels_last,
                          at::Tensor& grad_skip, at::Tensor& grad_up, bool need_affine_grad, at::Tensor& grad_scale,
                          at::Tensor& grad_shift) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> sc, sh;
  affine_params<scalar_t, acc_t>(scale, shift, s.out_channels, sc, sh);
  const auto htaps = axis_taps<acc_t>(s.low_height, s.height, align_corners);
  const auto wtaps = axis_taps<acc_t>(s.low_width, s.width, align_corners);
  const scalar_t* lp = low.data_ptr<scalar_t>();
  const scalar_t* sp = skip.data_ptr<scalar_t>();
  const scalar_t* gp = grad_out.data_ptr<scalar_t>();
  scalar_t* gsp = grad_skip.data_ptr<scalar_t>();
  // add mode: the upsampled part's gradient is grad_skip itself
  scalar_t* gup = s.mode == JoinMode::kAdd ? gsp : grad_up.data_ptr<scalar_t>();
  const Layout in{channels_last, s.low_height, s.low_width};
  const Layout io{channels_last, s.height, s.width};
  const bool concat = s.mode == JoinMode::kConcat;
  const int64_t Cl = s.low_channels, Cs = s.skip_channels, Co = s.out_channels, W = s.width;
  const bool need_x = relu || need_affine_grad;
  const int64_t rows = channels_last ? s.batch * s.height : s.batch * Co * s.height;
  // channels_last rows hold every channel; NCHW rows one channel
  const int64_t partial_width = channels_last ? Co : 1;
  std::vector<acc_t> partial_scale(need_affine_grad ? rows * partial_width : 0, acc_t(0));
  std::vector<acc_t> partial_shift(need_affine_grad ? rows * partial_width : 0, acc_t(0));

  auto element = [&](int64_t n, int64_t c, int64_t y, int64_t x, int64_t row, int64_t slot) {
    const acc_t g = static_cast<acc_t>(gp[io.offset(n, c, y, x, Co)]);
    acc_t pre = acc_t(0);  // the join x before the affine, recomputed only where it is needed
    const bool from_low = !concat || c < Cl;
    const bool from_skip = !concat || c >= Cl;
    const int64_t cs = concat ? c - Cl : c;
    if (need_x) {
      if (from_low) pre = upsampled<scalar_t, acc_t>(lp, in, n, c, Cl, htaps[y], wtaps[x]);
      if (from_skip) pre += static_cast<acc_t>(sp[io.offset(n, cs, y, x, Cs)]);
    }
    const acc_t g_pre_affine = common::relu_grad<acc_t>(g, pre * sc[c] + sh[c], relu);
    if (need_affine_grad) {
      partial_scale[row * partial_width + slot] += g_pre_affine * pre;
      partial_shift[row * partial_width + slot] += g_pre_affine;
    }
    const scalar_t gx = static_cast<scalar_t>(g_pre_affine * sc[c]);
    if (from_skip) gsp[io.offset(n, cs, y, x, Cs)] = gx;
    if (concat && from_low) gup[io.offset(n, c, y, x, Cl)] = gx;
  };

  if (channels_last) {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / s.height, y = row % s.height;
        for (int64_t x = 0; x < W; ++x)
          for (int64_t c = 0; c < Co; ++c) element(n, c, y, x, row, c);
      }
    });
  } else {
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % s.height, c = (row / s.height) % Co, n = row / (s.height * Co);
        for (int64_t x = 0; x < W; ++x) element(n, c, y, x, row, 0);
      }
    });
  }
  if (!need_affine_grad) return;
  // Fixed-order reduction of the row partials: deterministic whatever the thread count.
  std::vector<acc_t> sum_scale(Co, acc_t(0)), sum_shift(Co, acc_t(0));
  for (int64_t row = 0; row < rows; ++row) {
    if (channels_last) {
      for (int64_t c = 0; c < Co; ++c) {
        sum_scale[c] += partial_scale[row * Co + c];
        sum_shift[c] += partial_shift[row * Co + c];
      }
    } else {
      const int64_t c = (row / s.height) % Co;
      sum_scale[c] += partial_scale[row];
      sum_shift[c] += partial_shift[row];
    }
  }
  scalar_t* gsc = grad_scale.data_ptr<scalar_t>();
  scalar_t* gsh = grad_shift.data_ptr<scalar_t>();
  for (int64_t c = 0; c < Co; ++c) {
    gsc[c] = static_cast<scalar_t>(sum_scale[c]);
    gsh[c] = static_cast<scalar_t>(sum_shift[c]);
  }
}

// Backward, pass 2 (over inputs): each low pixel gathers the gradients of the outputs that read it.
template <typename scalar_t>
void backward_gather_kernel(const at::Tensor& grad_up, at::Tensor& grad_low, const UpsampleConcatShape& s,
                            bool align_corners, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto th = common::bilinear_transpose<acc_t>(s.low_height, s.height, align_corners);
  const auto tw = common::bilinear_transpose<acc_t>(s.low_width, s.width, align_corners);
  const scalar_t* gp = grad_up.data_ptr<scalar_t>();
  scalar_t* glp = grad_low.data_ptr<scalar_t>();
  const Layout in{channels_last, s.low_height, s.low_width};
  const Layout io{channels_last, s.height, s.width};
  // grad_up has the up part's channels (Cl) in concat mode and all channels (== Cl) in add mode
  const int64_t Cl = s.low_channels, w = s.low_width;
  if (channels_last) {
    at::parallel_for(0, s.batch * s.low_height, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(Cl);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / s.low_height, i = row % s.low_height;
        for (int64_t j = 0; j < w; ++j) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t a = th.offsets[i]; a < th.offsets[i + 1]; ++a) {
            for (int64_t b = tw.offsets[j]; b < tw.offsets[j + 1]; ++b) {
              const acc_t weight = th.weights[a] * tw.weights[b];
              const scalar_t* g = gp + io.offset(n, 0, th.outputs[a], tw.outputs[b], Cl);
              for (int64_t c = 0; c < Cl; ++c) acc[c] += weight * static_cast<acc_t>(g[c]);
            }
          }
          scalar_t* out = glp + in.offset(n, 0, i, j, Cl);
          for (int64_t c = 0; c < Cl; ++c) out[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    });
    return;
  }
  at::parallel_for(0, s.batch * Cl * s.low_height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.low_height, c = (row / s.low_height) % Cl, n = row / (s.low_height * Cl);
      scalar_t* out = glp + in.offset(n, c, i, 0, Cl);
      for (int64_t j = 0; j < w; ++j) {
        acc_t total = acc_t(0);
        for (int64_t a = th.offsets[i]; a < th.offsets[i + 1]; ++a) {
          const scalar_t* g = gp + io.offset(n, c, th.outputs[a], 0, Cl);
          acc_t along_row = acc_t(0);
          for (int64_t b = tw.offsets[j]; b < tw.offsets[j + 1]; ++b)
            along_row += tw.weights[b] * static_cast<acc_t>(g[tw.outputs[b]]);
          total += th.weights[a] * along_row;
        }
        out[j] = static_cast<scalar_t>(total);
      }
    }
  });
}

at::Tensor upsample_concat_cpu(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                               const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                               bool relu, bool align_corners) {
  const UpsampleConcatShape s = check_upsample_concat(low, skip, std::string(mode), scale, shift);
  return forward(low, skip, s, scale, shift, relu, align_corners, RowWindow{0, s.height}, is_channels_last(skip));
}

at::Tensor upsample_concat_rows_cpu(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                                    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                                    bool relu, bool align_corners, int64_t row_begin, int64_t row_count,
                                    bool channels_last) {
  const UpsampleConcatShape s = check_upsample_concat_rows(low, skip, std::string(mode), scale, shift, row_begin,
                                                           row_count);
  return forward(low, skip, s, scale, shift, relu, align_corners, RowWindow{row_begin, row_count}, channels_last);
}

at::Tensor& upsample_concat_rows_out_cpu(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                                         const c10::optional<at::Tensor>& scale,
                                         const c10::optional<at::Tensor>& shift, bool relu, bool align_corners,
                                         int64_t row_begin, int64_t row_count, bool channels_last, at::Tensor& out) {
  const UpsampleConcatShape s = check_upsample_concat_rows(low, skip, std::string(mode), scale, shift, row_begin,
                                                           row_count);
  check_rows_out(out, s, row_count, channels_last, skip);
  forward_into(low, skip, s, scale, shift, relu, align_corners, RowWindow{row_begin, row_count}, channels_last, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> upsample_concat_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& low_in, const at::Tensor& skip_in, c10::string_view mode,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu, bool align_corners,
    bool need_affine_grad) {
  UpsampleConcatBackward b =
      prepare_upsample_concat_backward(grad_in, low_in, skip_in, std::string(mode), scale, shift, need_affine_grad);
  if (b.grad_out.numel() == 0) return b.gradients();
  const UpsampleConcatShape& s = b.shape;
  const bool channels_last = b.format == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_up;
  if (s.mode == JoinMode::kConcat) {
    grad_up = at::empty({s.batch, s.low_channels, s.height, s.width}, b.low.options().memory_format(b.format));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.low.scalar_type(), "upsample_concat_backward_cpu", [&] {
    backward_join_kernel<scalar_t>(b.grad_out, b.low, b.skip, s, scale, shift, relu, align_corners, channels_last,
                                   b.grad_skip, grad_up, need_affine_grad, b.grad_scale, b.grad_shift);
    backward_gather_kernel<scalar_t>(s.mode == JoinMode::kConcat ? grad_up : b.grad_skip, b.grad_low, s,
                                     align_corners, channels_last);
  });
  return b.gradients();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("upsample_concat", &upsample_concat_cpu);
  m.impl("upsample_concat_rows", &upsample_concat_rows_cpu);
  m.impl("upsample_concat_rows.out", &upsample_concat_rows_out_cpu);
  m.impl("upsample_concat_backward", &upsample_concat_backward_cpu);
}

}  // namespace ops
}  // namespace fastladder

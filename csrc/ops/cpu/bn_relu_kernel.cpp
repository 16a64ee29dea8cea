// CPU kernels of fastladder::bn_relu. x is read in place when each (n, c) plane is contiguous
// (NCHW, or a channel slice of a larger buffer), when it is channels_last, or when it is a channel
// slice of a channels_last buffer.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/Resize.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/bn_relu.h"
#include "ops/common/affine.h"
#include "ops/cpu/vectorize.h"

namespace fastladder {
namespace ops {

namespace {

// x in a layout the kernels read in place: channels_last (dense, or a channel slice of a wider
// buffer), or (n, c) planes each contiguous.
at::Tensor readable(const at::Tensor& x) {
  if (is_channels_last(x) || is_channels_last_slice(x) || planes_contiguous(x)) return x;
  return x.contiguous();
}

template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> as_acc(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const scalar_t* p = c.data_ptr<scalar_t>();
  return std::vector<at::opmath_type<scalar_t>>(p, p + c.numel());
}

// NCHW-like x: calls body(n, c, x_run, y_run) for every (n, c) plane of H*W contiguous elements.
template <typename scalar_t, typename Body>
void for_each_plane(const at::Tensor& x, const at::Tensor& y, Body body) {
  const int64_t C = x.size(1);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, x.size(0) * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      body(n, c, xp + n * x.stride(0) + c * x.stride(1), yp + n * y.stride(0) + c * y.stride(1));
    }
  });
}

// channels_last x: calls body(chunk, first_pixel, end_pixel) over fixed chunks of pixels (all
// channels of a pixel are adjacent). The chunking does not depend on the thread count, so
// per-chunk partial sums reduce to the same bits on every run.
constexpr int64_t kPixelChunk = 512;

template <typename Body>
void for_each_pixel_chunk(const at::Tensor& x, Body body) {
  const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) body(k, k * kPixelChunk, std::min(pixels, (k + 1) * kPixelChunk));
  });
}

// The forward's inner loops for float and bfloat16 (the dtypes models run in) are cloned per ISA
// (ops/cpu/vectorize.h): on SSE2 they ran at about half the speed of AVX-512 (0.23 vs 0.13 ms for a
// 4608-pixel, 224-channel band on one core). With -ffp-contract=off every clone rounds x * scale
// before adding shift, as common::affine_relu does for the other dtypes.

// y[c] = relu(x[c] * scale[c] + shift[c]) for the C adjacent channels of one pixel
FL_CPU_CLONES void affine_relu_pixel(const float* __restrict__ x, const float* __restrict__ scale,
                                     const float* __restrict__ shift, float* __restrict__ y, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) y[c] = common::affine_relu<float>(x[c], scale[c], shift[c], true);
}

// y[k] = relu(x[k] * scale + shift) along one contiguous (n, c) plane
FL_CPU_CLONES void affine_relu_plane(const float* __restrict__ x, float scale, float shift, float* __restrict__ y,
                                     int64_t count) {
  for (int64_t k = 0; k < count; ++k) y[k] = common::affine_relu<float>(x[k], scale, shift, true);
}

// bfloat16 (optimize_for_inference(dtype=torch.bfloat16)): the same float arithmetic on the raw bits;
// through c10::BFloat16 the scalar conversions made bn_relu 2x slower in bfloat16 than in float32.
FL_CPU_CLONES void affine_relu_pixel_bf16(const uint16_t* __restrict__ x, const float* __restrict__ scale,
                                          const float* __restrict__ shift, uint16_t* __restrict__ y,
                                          int64_t channels) {
  for (int64_t c = 0; c < channels; ++c)
    y[c] = float_to_bf16_bits(common::affine_relu<float>(bf16_bits_to_float(x[c]), scale[c], shift[c], true));
}

#ifdef FL_AVX512_BF16
// The same on CPUs with AVX512_BF16, whose conversion rounds 16 lanes in one instruction (1.2-1.4x faster
// over the dense-block prefixes). Where it may differ from float_to_bf16_bits (a subnormal or NaN lane),
// the 16 lanes take the loop above instead, so the bits are the same.
FL_AVX512_BF16 void affine_relu_pixel_bf16_avx512(const uint16_t* x, const float* scale, const float* shift,
                                                 uint16_t* y, int64_t channels) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < channels; c += 16) {
    const __mmask16 mask = channels - c >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (channels - c)) - 1);
    const __m512 product = _mm512_mul_ps(load_bf16x16(mask, x + c), _mm512_maskz_loadu_ps(mask, scale + c));
    // max returns its second operand for a NaN or for zeros of either sign: relu_value's NaN and -0
    const __m512 value = _mm512_max_ps(zero, _mm512_add_ps(product, _mm512_maskz_loadu_ps(mask, shift + c)));
    if (bf16x16_inexact_lanes(mask, value)) {
      affine_relu_pixel_bf16(x + c, scale + c, shift + c, y + c, std::min<int64_t>(16, channels - c));
    } else {
      store_bf16x16(mask, y + c, value);
    }
  }
}
#endif

FL_CPU_CLONES void affine_relu_plane_bf16(const uint16_t* __restrict__ x, float scale, float shift,
                                          uint16_t* __restrict__ y, int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    y[k] = float_to_bf16_bits(common::affine_relu<float>(bf16_bits_to_float(x[k]), scale, shift, true));
}

// The same for every dtype (float and bfloat16: the clones above; others: this loop, accumulating in
// acc_t).
template <typename scalar_t, typename acc_t>
void affine_relu_pixel_any(const scalar_t* x, const acc_t* scale, const acc_t* shift, scalar_t* y, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c)
    y[c] = static_cast<scalar_t>(common::affine_relu<acc_t>(static_cast<acc_t>(x[c]), scale[c], shift[c], true));
}
inline void affine_relu_pixel_any(const float* x, const float* scale, const float* shift, float* y, int64_t channels) {
  affine_relu_pixel(x, scale, shift, y, channels);
}
inline void affine_relu_pixel_any(const c10::BFloat16* x, const float* scale, const float* shift, c10::BFloat16* y,
                                  int64_t channels) {
#ifdef FL_AVX512_BF16
  if (cpu_has_avx512_bf16()) {
    return affine_relu_pixel_bf16_avx512(reinterpret_cast<const uint16_t*>(x), scale, shift,
                                         reinterpret_cast<uint16_t*>(y), channels);
  }
#endif
  affine_relu_pixel_bf16(reinterpret_cast<const uint16_t*>(x), scale, shift, reinterpret_cast<uint16_t*>(y),
                         channels);
}

template <typename scalar_t, typename acc_t>
void affine_relu_plane_any(const scalar_t* x, acc_t scale, acc_t shift, scalar_t* y, int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    y[k] = static_cast<scalar_t>(common::affine_relu<acc_t>(static_cast<acc_t>(x[k]), scale, shift, true));
}
inline void affine_relu_plane_any(const float* x, float scale, float shift, float* y, int64_t count) {
  affine_relu_plane(x, scale, shift, y, count);
}
inline void affine_relu_plane_any(const c10::BFloat16* x, float scale, float shift, c10::BFloat16* y,
                                  int64_t count) {
  affine_relu_plane_bf16(reinterpret_cast<const uint16_t*>(x), scale, shift, reinterpret_cast<uint16_t*>(y), count);
}

at::Tensor result_like(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(bn_relu_output_format(x)));
}

at::Tensor bn_relu_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift) {
  check_bn_relu(x_in, scale, shift);
  const at::Tensor x = readable(x_in);
  at::Tensor y = result_like(x);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sc = as_acc<scalar_t>(scale), sh = as_acc<scalar_t>(shift);
    const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
    if (bn_relu_output_format(x) == at::MemoryFormat::ChannelsLast) {
      // dense channels_last (pixels C apart) or a slice of a wider NHWC buffer: pixels stride(3) apart
      const int64_t pixel_stride = x.stride(3), image_stride = x.stride(0);
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      for_each_pixel_chunk(x, [&](int64_t, int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
          const scalar_t* xr = xp + (p / HW) * image_stride + (p % HW) * pixel_stride;
          scalar_t* yr = yp + p * C;
          affine_relu_pixel_any(xr, sc.data(), sh.data(), yr, C);
        }
      });
    } else {
      for_each_plane<scalar_t>(x, y, [&](int64_t, int64_t c, const scalar_t* xr, scalar_t* yr) {
        affine_relu_plane_any(xr, sc[c], sh[c], yr, HW);
      });
    }
  });
  return y;
}

at::Tensor& bn_relu_out_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& out) {
  TORCH_CHECK_VALUE(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
                    "out must have x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                    out.scalar_type(), ", ", out.device());
  at::Tensor y = bn_relu_cpu(x, scale, shift);
  at::native::resize_output(out, y.sizes());
  out.copy_(y);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                    const at::Tensor& scale, const at::Tensor& shift,
                                                                    bool need_affine_grad) {
  check_bn_relu(x_in, scale, shift);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes() && grad_in.scalar_type() == x_in.scalar_type(),
                    "grad_out must have x's shape and dtype ", x_in.sizes(), ", got ", grad_in.sizes(), " ",
                    grad_in.scalar_type());
  // x dense (NCHW or channels_last) in its result's layout, grad_out in the same layout, so that
  // one (n, c) run or one pixel chunk indexes all three
  const at::MemoryFormat format = bn_relu_output_format(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor grad_out = grad_in.contiguous(format);
  at::Tensor grad_x = result_like(x);
  const int64_t C = x.size(1);
  at::Tensor grad_scale = at::zeros({need_affine_grad ? C : 0}, x.options());
  at::Tensor grad_shift = at::zeros({need_affine_grad ? C : 0}, x.options());
  if (x.numel() == 0) return {grad_x, grad_scale, grad_shift};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sc = as_acc<scalar_t>(scale), sh = as_acc<scalar_t>(shift);
    const int64_t N = x.size(0), HW = x.size(2) * x.size(3);
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    // Partial sums per (n, c) plane, or per (pixel chunk, c): reduced below in a fixed order.
    const bool channels_last = is_channels_last(x);
    const int64_t parts = channels_last ? (N * HW + kPixelChunk - 1) / kPixelChunk : N;
    std::vector<acc_t> part_scale(need_affine_grad ? parts * C : 0), part_shift(need_affine_grad ? parts * C : 0);
    if (channels_last) {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* gxp = grad_x.data_ptr<scalar_t>();
      for_each_pixel_chunk(x, [&](int64_t chunk, int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
          for (int64_t c = 0; c < C; ++c) {
            const acc_t xv = static_cast<acc_t>(xp[p * C + c]);
            const acc_t g = common::relu_grad<acc_t>(static_cast<acc_t>(gp[p * C + c]), xv * sc[c] + sh[c], true);
            gxp[p * C + c] = static_cast<scalar_t>(g * sc[c]);
            if (need_affine_grad) {
              part_scale[chunk * C + c] += g * xv;
              part_shift[chunk * C + c] += g;
            }
          }
        }
      });
    } else {
      const scalar_t* xbase = x.data_ptr<scalar_t>();
      for_each_plane<scalar_t>(x, grad_x, [&](int64_t n, int64_t c, const scalar_t* xr, scalar_t* gxr) {
        // grad_out and grad_x share x's dense layout, so the same offset indexes all three
        const scalar_t* gr = gp + (xr - xbase);
        const acc_t a = sc[c], b = sh[c];
        acc_t sum_scale = acc_t(0), sum_shift = acc_t(0);
        for (int64_t k = 0; k < HW; ++k) {
          const acc_t xv = static_cast<acc_t>(xr[k]);
          const acc_t g = common::relu_grad<acc_t>(static_cast<acc_t>(gr[k]), xv * a + b, true);
          gxr[k] = static_cast<scalar_t>(g * a);
          sum_scale += g * xv;
          sum_shift += g;
        }
        if (need_affine_grad) {
          part_scale[n * C + c] = sum_scale;
          part_shift[n * C + c] = sum_shift;
        }
      });
    }
    if (need_affine_grad) {
      scalar_t* gsc = grad_scale.data_ptr<scalar_t>();
      scalar_t* gsh = grad_shift.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        acc_t s1 = acc_t(0), s2 = acc_t(0);
        for (int64_t k = 0; k < parts; ++k) {
          s1 += part_scale[k * C + c];
          s2 += part_shift[k * C + c];
        }
        gsc[c] = static_cast<scalar_t>(s1);
        gsh[c] = static_cast<scalar_t>(s2);
      }
    }
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace

void affine_relu_pixel_bf16_bits(const uint16_t* x, const float* scale, const float* shift, uint16_t* y,
                                 int64_t channels) {
  affine_relu_pixel_any(reinterpret_cast<const c10::BFloat16*>(x), scale, shift, reinterpret_cast<c10::BFloat16*>(y),
                        channels);
}

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("bn_relu", &bn_relu_cpu);
  m.impl("bn_relu.out", &bn_relu_out_cpu);
  m.impl("bn_relu_backward", &bn_relu_backward_cpu);
}

}  // namespace ops
}  // namespace fastladder

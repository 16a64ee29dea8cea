// CUDA kernels of fastladder::upsample_concat: indexing, launch and memory only; the arithmetic is
// common/bilinear.h and common/affine.h, the same functions the CPU kernels call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "ops/common/affine.h"
#include "ops/common/bilinear.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/upsample_concat.h"

namespace fastladder {
namespace ops {

namespace {

using common::AxisTap;

template <typename acc_t>
struct Params {
  int64_t batch, low_channels, low_height, low_width, skip_channels, height, width, out_channels;
  acc_t scale_h, scale_w;
  bool concat, channels_last, relu, align_corners, has_affine;
  // The output: rows [row_begin, row_begin + out_height) of the full height, in its own layout.
  int64_t row_begin, out_height;
  bool out_channels_last;

  __device__ int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t channels, int64_t h,
                            int64_t w) const {
    return channels_last ? ((n * h + y) * w + x) * channels + c : ((n * channels + c) * h + y) * w + x;
  }
  // element (n, c, y, x) of a full-size [N, channels, H, W] tensor in the inputs' layout
  __device__ int64_t full_offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t channels) const {
    return offset(n, c, y, x, channels, height, width);
  }
  // (n, c, y_out, x) of output element `index` in the output's layout
  __device__ void decode(int64_t index, int64_t& n, int64_t& c, int64_t& y, int64_t& x) const {
    if (out_channels_last) {
      c = index % out_channels;
      index /= out_channels;
      x = index % width;
      index /= width;
      y = index % out_height;
      n = index / out_height;
    } else {
      x = index % width;
      index /= width;
      y = index % out_height;
      index /= out_height;
      c = index % out_channels;
      n = index / out_channels;
    }
  }
};

template <typename scalar_t, typename acc_t>
__device__ acc_t upsampled(const scalar_t* low, const Params<acc_t>& p, int64_t n, int64_t c, int64_t y,
                           int64_t x) {
  const AxisTap<acc_t> th = common::bilinear_tap<acc_t>(y, p.low_height, p.height, p.scale_h, p.align_corners);
  const AxisTap<acc_t> tw = common::bilinear_tap<acc_t>(x, p.low_width, p.width, p.scale_w, p.align_corners);
  auto at = [&](int64_t i, int64_t j) {
    return static_cast<acc_t>(low[p.offset(n, c, i, j, p.low_channels, p.low_height, p.low_width)]);
  };
  return common::bilinear_combine<acc_t>(th, tw, at(th.i0, tw.i0), at(th.i0, tw.i1), at(th.i1, tw.i0),
                                         at(th.i1, tw.i1));
}

// The join x (before the affine) at output element (n, c, y, x).
template <typename scalar_t, typename acc_t>
__device__ acc_t joined(const scalar_t* low, const scalar_t* skip, const Params<acc_t>& p, int64_t n, int64_t c,
                        int64_t y, int64_t x) {
  if (p.concat) {
    if (c < p.low_channels) return upsampled(low, p, n, c, y, x);
    return static_cast<acc_t>(skip[p.full_offset(n, c - p.low_channels, y, x, p.skip_channels)]);
  }
  return upsampled(low, p, n, c, y, x) + static_cast<acc_t>(skip[p.full_offset(n, c, y, x, p.skip_channels)]);
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ low, const scalar_t* __restrict__ skip,
                               const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                               scalar_t* __restrict__ out, Params<acc_t> p, int64_t total) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t n, c, y_out, x;
    p.decode(index, n, c, y_out, x);
    const int64_t y = p.row_begin + y_out;
    if (y < 0 || y >= p.height) {  // the zero rows of the convolution padding (upsample_concat_rows)
      out[index] = scalar_t(0);
      continue;
    }
    const acc_t a = p.has_affine ? static_cast<acc_t>(scale[c]) : acc_t(1);
    const acc_t b = p.has_affine ? static_cast<acc_t>(shift[c]) : acc_t(0);
    out[index] = static_cast<scalar_t>(common::affine_relu<acc_t>(joined(low, skip, p, n, c, y, x), a, b, p.relu));
  }
}

// Backward pass 1 (over outputs): gradient w.r.t. the join, to grad_skip and grad_up.
template <typename scalar_t, typename acc_t>
__global__ void backward_join_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ low,
                                     const scalar_t* __restrict__ skip, const scalar_t* __restrict__ scale,
                                     const scalar_t* __restrict__ shift, scalar_t* __restrict__ grad_skip,
                                     scalar_t* __restrict__ grad_up, Params<acc_t> p, int64_t total) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t n, c, y, x;
    p.decode(index, n, c, y, x);
    const acc_t a = p.has_affine ? static_cast<acc_t>(scale[c]) : acc_t(1);
    const acc_t b = p.has_affine ? static_cast<acc_t>(shift[c]) : acc_t(0);
    const acc_t pre = p.relu ? joined(low, skip, p, n, c, y, x) : acc_t(0);
    const scalar_t gx =
        static_cast<scalar_t>(common::relu_grad<acc_t>(static_cast<acc_t>(grad_out[index]), common::affine(pre, a, b),
                                                       p.relu) * a);
    if (!p.concat) {
      grad_skip[index] = gx;  // add mode: grad_up is grad_skip
    } else if (c < p.low_channels) {
      grad_up[p.full_offset(n, c, y, x, p.low_channels)] = gx;
    } else {
      grad_skip[p.full_offset(n, c - p.low_channels, y, x, p.skip_channels)] = gx;
    }
  }
}

// d/dscale and d/dshift: one block per output channel, a fixed-order reduction (no atomics).
template <typename scalar_t, typename acc_t>
__global__ void backward_affine_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ low,
                                       const scalar_t* __restrict__ skip, const scalar_t* __restrict__ scale,
                                       const scalar_t* __restrict__ shift, scalar_t* __restrict__ grad_scale,
                                       scalar_t* __restrict__ grad_shift, Params<acc_t> p) {
  __shared__ acc_t shared[cuda::kThreads];
  const int64_t c = blockIdx.x;
  const acc_t a = static_cast<acc_t>(scale[c]), b = static_cast<acc_t>(shift[c]);
  const int64_t per_channel = p.batch * p.height * p.width;
  acc_t sum_scale = acc_t(0), sum_shift = acc_t(0);
  for (int64_t k = threadIdx.x; k < per_channel; k += blockDim.x) {
    const int64_t x = k % p.width, y = (k / p.width) % p.height, n = k / (p.width * p.height);
    const acc_t pre = joined(low, skip, p, n, c, y, x);
    const acc_t g = common::relu_grad<acc_t>(static_cast<acc_t>(grad_out[p.full_offset(n, c, y, x, p.out_channels)]),
                                             common::affine(pre, a, b), p.relu);
    sum_scale += g * pre;
    sum_shift += g;
  }
  sum_scale = cuda::block_sum(sum_scale, shared);
  sum_shift = cuda::block_sum(sum_shift, shared);
  if (threadIdx.x == 0) {
    grad_scale[c] = static_cast<scalar_t>(sum_scale);
    grad_shift[c] = static_cast<scalar_t>(sum_shift);
  }
}

// The backward's gather tables, built on the device (no host tables, no copies, no stream
// synchronization: capturable in CUDA graphs): ranges[2 * i], ranges[2 * i + 1] = the readers
// [first, end) of row i (i < low_height), then of column j at 2 * (low_height + j).
template <typename acc_t>
__global__ void reader_ranges_kernel(Params<acc_t> p, int64_t* __restrict__ ranges) {
  const int64_t total = p.low_height + p.low_width;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    if (k < p.low_height) {
      common::bilinear_readers<acc_t>(k, p.low_height, p.height, p.scale_h, p.align_corners, ranges[2 * k],
                                      ranges[2 * k + 1]);
    } else {
      common::bilinear_readers<acc_t>(k - p.low_height, p.low_width, p.width, p.scale_w, p.align_corners,
                                      ranges[2 * k], ranges[2 * k + 1]);
    }
  }
}

// Backward pass 2 (over inputs): each low pixel gathers from the outputs that read it, in increasing
// output order, with the weights of the forward taps (the CPU's order and rounding: the sum along
// a row first, then over the rows; products rounded on their own).
template <typename scalar_t, typename acc_t>
__global__ void backward_gather_kernel(const scalar_t* __restrict__ grad_up, scalar_t* __restrict__ grad_low,
                                       const int64_t* __restrict__ ranges, Params<acc_t> p, int64_t total) {
  const int64_t C = p.low_channels;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t n, c, i, j, rest = index;
    if (p.channels_last) {
      c = rest % C;
      rest /= C;
      j = rest % p.low_width;
      rest /= p.low_width;
      i = rest % p.low_height;
      n = rest / p.low_height;
    } else {
      j = rest % p.low_width;
      rest /= p.low_width;
      i = rest % p.low_height;
      rest /= p.low_height;
      c = rest % C;
      n = rest / C;
    }
    const int64_t* rows = ranges + 2 * i;
    const int64_t* cols = ranges + 2 * (p.low_height + j);
    acc_t total_grad = acc_t(0);
    for (int64_t y = rows[0]; y < rows[1]; ++y) {
      const acc_t wy = common::bilinear_weight(
          common::bilinear_tap<acc_t>(y, p.low_height, p.height, p.scale_h, p.align_corners), i);
      acc_t along_row = acc_t(0);
      for (int64_t x = cols[0]; x < cols[1]; ++x) {
        const acc_t wx = common::bilinear_weight(
            common::bilinear_tap<acc_t>(x, p.low_width, p.width, p.scale_w, p.align_corners), j);
        along_row += common::mul_rn(wx, static_cast<acc_t>(grad_up[p.full_offset(n, c, y, x, C)]));
      }
      total_grad += common::mul_rn(wy, along_row);
    }
    grad_low[index] = static_cast<scalar_t>(total_grad);
  }
}

template <typename acc_t>
Params<acc_t> make_params(const UpsampleConcatShape& s, bool channels_last, bool relu, bool align_corners) {
  Params<acc_t> p;
  p.batch = s.batch;
  p.low_channels = s.low_channels;
  p.low_height = s.low_height;
  p.low_width = s.low_width;
  p.skip_channels = s.skip_channels;
  p.height = s.height;
  p.width = s.width;
  p.out_channels = s.out_channels;
  p.scale_h = common::bilinear_scale<acc_t>(s.low_height, s.height, align_corners);
  p.scale_w = common::bilinear_scale<acc_t>(s.low_width, s.width, align_corners);
  p.concat = s.mode == JoinMode::kConcat;
  p.channels_last = channels_last;
  p.relu = relu;
  p.align_corners = align_corners;
  p.has_affine = s.has_affine;
  p.row_begin = 0;
  p.out_height = s.height;
  p.out_channels_last = channels_last;
  return p;
}

template <typename scalar_t>
const scalar_t* optional_ptr(const c10::optional<at::Tensor>& t, at::Tensor& holder) {
  if (!t.has_value() || !t->defined()) return nullptr;
  holder = t->contiguous();
  return holder.data_ptr<scalar_t>();
}

// Rows [row_begin, row_begin + row_count) of the result, channels_last or NCHW; the inputs are read
// in skip's layout.
void forward_into(const at::Tensor& low_in, const at::Tensor& skip_in, const UpsampleConcatShape& s,
                  const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu,
                  bool align_corners, int64_t row_begin, int64_t row_count, bool channels_last_out, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(low_in.device());
  if (out.numel() == 0) return;
  const at::MemoryFormat input_format = output_format(skip_in);
  const at::Tensor low = low_in.contiguous(input_format), skip = skip_in.contiguous(input_format);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, low.scalar_type(), "upsample_concat_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor scale_c, shift_c;
    const scalar_t* sp = optional_ptr<scalar_t>(scale, scale_c);
    const scalar_t* bp = optional_ptr<scalar_t>(shift, shift_c);
    auto p = make_params<acc_t>(s, input_format == at::MemoryFormat::ChannelsLast, relu, align_corners);
    p.row_begin = row_begin;
    p.out_height = row_count;
    p.out_channels_last = channels_last_out;
    forward_kernel<scalar_t, acc_t><<<cuda::blocks_for(out.numel()), cuda::kThreads, 0, stream>>>(
        low.data_ptr<scalar_t>(), skip.data_ptr<scalar_t>(), sp, bp, out.data_ptr<scalar_t>(), p, out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor forward(const at::Tensor& low, const at::Tensor& skip, const UpsampleConcatShape& s,
                   const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu,
                   bool align_corners, int64_t row_begin, int64_t row_count, bool channels_last_out) {
  at::Tensor out = at::empty({s.batch, s.out_channels, row_count, s.width},
                             skip.options().memory_format(channels_last_out ? at::MemoryFormat::ChannelsLast
                                                                            : at::MemoryFormat::Contiguous));
  forward_into(low, skip, s, scale, shift, relu, align_corners, row_begin, row_count, channels_last_out, out);
  return out;
}

at::Tensor upsample_concat_cuda(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                                const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                                bool relu, bool align_corners) {
  const UpsampleConcatShape s = check_upsample_concat(low, skip, std::string(mode), scale, shift);
  return forward(low, skip, s, scale, shift, relu, align_corners, 0, s.height, is_channels_last(skip));
}

at::Tensor upsample_concat_rows_cuda(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                                     const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                                     bool relu, bool align_corners, int64_t row_begin, int64_t row_count,
                                     bool channels_last) {
  const UpsampleConcatShape s = check_upsample_concat_rows(low, skip, std::string(mode), scale, shift, row_begin,
                                                           row_count);
  return forward(low, skip, s, scale, shift, relu, align_corners, row_begin, row_count, channels_last);
}

at::Tensor& upsample_concat_rows_out_cuda(const at::Tensor& low, const at::Tensor& skip, c10::string_view mode,
                                          const c10::optional<at::Tensor>& scale,
                                          const c10::optional<at::Tensor>& shift, bool relu, bool align_corners,
                                          int64_t row_begin, int64_t row_count, bool channels_last, at::Tensor& out) {
  const UpsampleConcatShape s = check_upsample_concat_rows(low, skip, std::string(mode), scale, shift, row_begin,
                                                           row_count);
  check_rows_out(out, s, row_count, channels_last, skip);
  forward_into(low, skip, s, scale, shift, relu, align_corners, row_begin, row_count, channels_last, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> upsample_concat_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& low_in, const at::Tensor& skip_in, c10::string_view mode,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool relu, bool align_corners,
    bool need_affine_grad) {
  const c10::cuda::CUDAGuard guard(low_in.device());
  UpsampleConcatBackward b =
      prepare_upsample_concat_backward(grad_in, low_in, skip_in, std::string(mode), scale, shift, need_affine_grad);
  if (b.grad_out.numel() == 0) return b.gradients();
  const UpsampleConcatShape& s = b.shape;
  const at::MemoryFormat format = b.format;
  const at::Tensor &low = b.low, &skip = b.skip, &grad_out = b.grad_out;
  at::Tensor &grad_low = b.grad_low, &grad_skip = b.grad_skip, &grad_scale = b.grad_scale, &grad_shift = b.grad_shift;
  const bool concat = s.mode == JoinMode::kConcat;
  at::Tensor grad_up = concat ? at::empty({s.batch, s.low_channels, s.height, s.width}, low.options().memory_format(format))
                              : grad_skip;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, low.scalar_type(), "upsample_concat_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor scale_c, shift_c;
    const scalar_t* sp = optional_ptr<scalar_t>(scale, scale_c);
    const scalar_t* bp = optional_ptr<scalar_t>(shift, shift_c);
    const auto p = make_params<acc_t>(s, format == at::MemoryFormat::ChannelsLast, relu, align_corners);
    backward_join_kernel<scalar_t, acc_t><<<cuda::blocks_for(grad_out.numel()), cuda::kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), low.data_ptr<scalar_t>(), skip.data_ptr<scalar_t>(), sp, bp,
        grad_skip.data_ptr<scalar_t>(), grad_up.data_ptr<scalar_t>(), p, grad_out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_affine_grad) {
      backward_affine_kernel<scalar_t, acc_t>
          <<<cuda::grid_of(launch::per_item_grid(s.out_channels), "upsample_concat_backward"), cuda::kThreads, 0,
             stream>>>(
          grad_out.data_ptr<scalar_t>(), low.data_ptr<scalar_t>(), skip.data_ptr<scalar_t>(), sp, bp,
          grad_scale.data_ptr<scalar_t>(), grad_shift.data_ptr<scalar_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_low.numel() > 0) {
      at::Tensor ranges = at::empty({2 * (s.low_height + s.low_width)}, low.options().dtype(at::kLong));
      reader_ranges_kernel<acc_t><<<cuda::blocks_for(s.low_height + s.low_width), cuda::kThreads, 0, stream>>>(
          p, ranges.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      backward_gather_kernel<scalar_t, acc_t><<<cuda::blocks_for(grad_low.numel()), cuda::kThreads, 0, stream>>>(
          grad_up.data_ptr<scalar_t>(), grad_low.data_ptr<scalar_t>(), ranges.data_ptr<int64_t>(), p,
          grad_low.numel());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return b.gradients();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) {
  m.impl("upsample_concat", &upsample_concat_cuda);
  m.impl("upsample_concat_rows", &upsample_concat_rows_cuda);
  m.impl("upsample_concat_rows.out", &upsample_concat_rows_out_cuda);
  m.impl("upsample_concat_backward", &upsample_concat_backward_cuda);
}

}  // namespace ops
}  // namespace fastladder

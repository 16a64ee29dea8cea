// CUDA kernels of fastladder::bn_relu: indexing and launch; the arithmetic is common/affine.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/native/Resize.h>
#include <torch/library.h>

#include "ops/bn_relu.h"
#include "ops/common/affine.h"
#include "ops/cuda/cuda_utils.cuh"

namespace fastladder {
namespace ops {

namespace {

// Sizes and strides of a 4-D tensor, so that x is read in place whatever its layout.
struct Strided4d {
  int64_t size[4];
  int64_t stride[4];
  __device__ int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x) const {
    return n * stride[0] + c * stride[1] + y * stride[2] + x * stride[3];
  }
};

Strided4d strided(const at::Tensor& t) {
  Strided4d s;
  for (int d = 0; d < 4; ++d) {
    s.size[d] = t.size(d);
    s.stride[d] = t.stride(d);
  }
  return s;
}

// (n, c, y, x) of element `index`: in NCHW order, or in NHWC order when channels_last (consecutive
// threads then read consecutive channels of a pixel: coalesced on channels_last tensors and on
// channel slices of channels_last buffers, where NCHW order would scatter every warp's accesses).
__device__ void decode(int64_t index, const Strided4d& s, bool channels_last, int64_t& n, int64_t& c, int64_t& y,
                       int64_t& x) {
  if (channels_last) {
    c = index % s.size[1];
    index /= s.size[1];
    x = index % s.size[3];
    index /= s.size[3];
    y = index % s.size[2];
    n = index / s.size[2];
    return;
  }
  x = index % s.size[3];
  index /= s.size[3];
  y = index % s.size[2];
  index /= s.size[2];
  c = index % s.size[1];
  n = index / s.size[1];
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, Strided4d xs, const scalar_t* __restrict__ scale,
                               const scalar_t* __restrict__ shift, scalar_t* __restrict__ y, Strided4d ys,
                               int64_t total, bool channels_last) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t n, c, h, w;
    decode(index, xs, channels_last, n, c, h, w);
    y[ys.offset(n, c, h, w)] = static_cast<scalar_t>(common::affine_relu<acc_t>(
        static_cast<acc_t>(x[xs.offset(n, c, h, w)]), static_cast<acc_t>(scale[c]), static_cast<acc_t>(shift[c]), true));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out, Strided4d gs, const scalar_t* __restrict__ x,
                                Strided4d xs, const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                                scalar_t* __restrict__ grad_x, Strided4d gxs, int64_t total, bool channels_last) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t n, c, h, w;
    decode(index, xs, channels_last, n, c, h, w);
    const acc_t a = static_cast<acc_t>(scale[c]);
    const acc_t g = common::relu_grad<acc_t>(
        static_cast<acc_t>(grad_out[gs.offset(n, c, h, w)]),
        common::affine<acc_t>(static_cast<acc_t>(x[xs.offset(n, c, h, w)]), a, static_cast<acc_t>(shift[c])), true);
    grad_x[gxs.offset(n, c, h, w)] = static_cast<scalar_t>(g * a);
  }
}

// d/dscale, d/dshift: one block per channel, fixed-order reduction.
template <typename scalar_t, typename acc_t>
__global__ void backward_affine_kernel(const scalar_t* __restrict__ grad_out, Strided4d gs,
                                       const scalar_t* __restrict__ x, Strided4d xs, const scalar_t* __restrict__ scale,
                                       const scalar_t* __restrict__ shift, scalar_t* __restrict__ grad_scale,
                                       scalar_t* __restrict__ grad_shift) {
  __shared__ acc_t shared[cuda::kThreads];
  const int64_t c = blockIdx.x;
  const acc_t a = static_cast<acc_t>(scale[c]), b = static_cast<acc_t>(shift[c]);
  const int64_t hw = xs.size[2] * xs.size[3], per_channel = xs.size[0] * hw;
  acc_t sum_scale = acc_t(0), sum_shift = acc_t(0);
  for (int64_t k = threadIdx.x; k < per_channel; k += blockDim.x) {
    const int64_t n = k / hw, h = (k % hw) / xs.size[3], w = k % xs.size[3];
    const acc_t xv = static_cast<acc_t>(x[xs.offset(n, c, h, w)]);
    const acc_t g =
        common::relu_grad<acc_t>(static_cast<acc_t>(grad_out[gs.offset(n, c, h, w)]), common::affine(xv, a, b), true);
    sum_scale += g * xv;
    sum_shift += g;
  }
  sum_scale = cuda::block_sum(sum_scale, shared);
  sum_shift = cuda::block_sum(sum_shift, shared);
  if (threadIdx.x == 0) {
    grad_scale[c] = static_cast<scalar_t>(sum_scale);
    grad_shift[c] = static_cast<scalar_t>(sum_shift);
  }
}

// d/dscale, d/dshift for channels_last layouts, pass 1: block (32 channels, 8 pixel rows); the 32
// lanes of a warp read 32 adjacent channels of one pixel (coalesced). Part p = blockIdx.y of
// `parts` sums pixels p, p + parts, ... (row r of the block: every 8th of those), and writes its
// partial sums to partial[2][parts][C]; pass 2 adds the parts in order (deterministic).
constexpr int kLanes = 32, kRows = 8;

template <typename scalar_t, typename acc_t>
__global__ void backward_affine_cl_kernel(const scalar_t* __restrict__ grad_out, Strided4d gs,
                                          const scalar_t* __restrict__ x, Strided4d xs,
                                          const scalar_t* __restrict__ scale, const scalar_t* __restrict__ shift,
                                          acc_t* __restrict__ partial) {
  __shared__ acc_t rows_scale[kRows][kLanes];
  __shared__ acc_t rows_shift[kRows][kLanes];
  const int64_t C = xs.size[1], W = xs.size[3], hw = xs.size[2] * xs.size[3], pixels = xs.size[0] * hw;
  const int64_t parts = gridDim.y, part = blockIdx.y;
  const int64_t c = blockIdx.x * static_cast<int64_t>(kLanes) + threadIdx.x;
  acc_t sum_scale = acc_t(0), sum_shift = acc_t(0);
  if (c < C) {
    const acc_t a = static_cast<acc_t>(scale[c]), b = static_cast<acc_t>(shift[c]);
    for (int64_t k = part + threadIdx.y * parts; k < pixels; k += parts * kRows) {
      const int64_t n = k / hw, h = (k % hw) / W, w = k % W;
      const acc_t xv = static_cast<acc_t>(x[xs.offset(n, c, h, w)]);
      const acc_t g =
          common::relu_grad<acc_t>(static_cast<acc_t>(grad_out[gs.offset(n, c, h, w)]), common::affine(xv, a, b), true);
      sum_scale += g * xv;
      sum_shift += g;
    }
  }
  rows_scale[threadIdx.y][threadIdx.x] = sum_scale;
  rows_shift[threadIdx.y][threadIdx.x] = sum_shift;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int r = 1; r < kRows; ++r) {
    sum_scale += rows_scale[r][threadIdx.x];
    sum_shift += rows_shift[r][threadIdx.x];
  }
  partial[part * C + c] = sum_scale;
  partial[(parts + part) * C + c] = sum_shift;
}

// Pass 2: one thread per channel adds the parts in order.
template <typename scalar_t, typename acc_t>
__global__ void sum_parts_kernel(const acc_t* __restrict__ partial, int64_t parts, int64_t C,
                                 scalar_t* __restrict__ grad_scale, scalar_t* __restrict__ grad_shift) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    acc_t sum_scale = acc_t(0), sum_shift = acc_t(0);
    for (int64_t p = 0; p < parts; ++p) {
      sum_scale += partial[p * C + c];
      sum_shift += partial[(parts + p) * C + c];
    }
    grad_scale[c] = static_cast<scalar_t>(sum_scale);
    grad_shift[c] = static_cast<scalar_t>(sum_shift);
  }
}

// Whether the kernels walk x in NHWC order: its channels are adjacent in memory (channels_last, or
// a channel slice of a channels_last buffer). bn_relu's result has the same layout then.
bool walk_channels_last(const at::Tensor& x) {
  return bn_relu_output_format(x) == at::MemoryFormat::ChannelsLast && x.size(1) > 1;
}

at::Tensor result_like(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(bn_relu_output_format(x)));
}

at::Tensor bn_relu_cuda(const at::Tensor& x, const at::Tensor& scale_in, const at::Tensor& shift_in) {
  check_bn_relu(x, scale_in, shift_in);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = result_like(x);
  if (y.numel() == 0) return y;
  const at::Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<cuda::blocks_for(y.numel()), cuda::kThreads, 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), strided(x), scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(),
        y.data_ptr<scalar_t>(), strided(y), y.numel(), walk_channels_last(x));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor& bn_relu_out_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& out) {
  TORCH_CHECK_VALUE(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
                    "out must have x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                    out.scalar_type(), ", ", out.device());
  at::Tensor y = bn_relu_cuda(x, scale, shift);
  at::native::resize_output(out, y.sizes());
  out.copy_(y);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                     const at::Tensor& scale_in,
                                                                     const at::Tensor& shift_in,
                                                                     bool need_affine_grad) {
  check_bn_relu(x, scale_in, shift_in);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
                    "grad_out must have x's shape and dtype ", x.sizes(), ", got ", grad_out.sizes(), " ",
                    grad_out.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = result_like(x);
  const int64_t C = x.size(1);
  at::Tensor grad_scale = at::zeros({need_affine_grad ? C : 0}, x.options());
  at::Tensor grad_shift = at::zeros({need_affine_grad ? C : 0}, x.options());
  if (x.numel() == 0) return {grad_x, grad_scale, grad_shift};
  const at::Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool channels_last = walk_channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<cuda::blocks_for(x.numel()), cuda::kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), strided(grad_out), x.data_ptr<scalar_t>(), strided(x),
        scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), strided(grad_x),
        x.numel(), channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_affine_grad && channels_last) {
      const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
      const launch::Shape shape = launch::reduction_grid(C, kLanes, pixels);
      at::Tensor partial = at::empty({2 * shape.y * C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      backward_affine_cl_kernel<scalar_t, acc_t>
          <<<cuda::grid_of(shape, "bn_relu_backward (channels_last)"), dim3(kLanes, kRows), 0, stream>>>(
              grad_out.data_ptr<scalar_t>(), strided(grad_out), x.data_ptr<scalar_t>(), strided(x),
              scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sum_parts_kernel<scalar_t, acc_t><<<cuda::blocks_for(C), cuda::kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), shape.y, C, grad_scale.data_ptr<scalar_t>(), grad_shift.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (need_affine_grad) {
      backward_affine_kernel<scalar_t, acc_t>
          <<<cuda::grid_of(launch::per_item_grid(C), "bn_relu_backward"), cuda::kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), strided(grad_out), x.data_ptr<scalar_t>(), strided(x),
          scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), grad_scale.data_ptr<scalar_t>(),
          grad_shift.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) {
  m.impl("bn_relu", &bn_relu_cuda);
  m.impl("bn_relu.out", &bn_relu_out_cuda);
  m.impl("bn_relu_backward", &bn_relu_backward_cuda);
}

}  // namespace ops
}  // namespace fastladder

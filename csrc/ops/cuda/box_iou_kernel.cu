// CUDA kernel of fastladder::box_iou: one thread per (i, j); the arithmetic is common/iou.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "ops/box_iou.h"
#include "ops/common/iou.h"
#include "ops/cuda/cuda_utils.cuh"

namespace fastladder {
namespace ops {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               scalar_t* __restrict__ out, int64_t n, int64_t m) {
  const int64_t total = n * m;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t i = index / m, j = index % m;
    const scalar_t* p = a + 4 * i;
    const scalar_t* q = b + 4 * j;
    out[index] = static_cast<scalar_t>(common::box_iou<acc_t>(p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3]));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou(boxes1_in, boxes2_in);
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  at::Tensor out = at::empty({boxes1_in.size(0), boxes2_in.size(0)}, boxes1_in.options());
  if (out.numel() == 0) return out;
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    box_iou_kernel<scalar_t, acc_t><<<cuda::blocks_for(out.numel()), cuda::kThreads, 0, stream>>>(
        boxes1.data_ptr<scalar_t>(), boxes2.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), boxes1.size(0),
        boxes2.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) { m.impl("box_iou", &box_iou_cuda); }

}  // namespace ops
}  // namespace fastladder

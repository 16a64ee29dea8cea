// CUDA kernels of fastladder::encode_boxes and fastladder::decode_boxes: one thread per box; the
// arithmetic is common/box_coder.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "ops/box_coder.h"
#include "ops/common/box_coder.h"
#include "ops/cuda/cuda_utils.cuh"

namespace fastladder {
namespace ops {

namespace {

template <typename scalar_t, typename acc_t, bool kDecode>
__global__ void box_coder_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ priors,
                                 scalar_t* __restrict__ out, int64_t total, int64_t num_priors, acc_t w_center,
                                 acc_t w_size) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const scalar_t* v = in + 4 * k;
    const scalar_t* p = priors + 4 * (k % num_priors);
    const acc_t a = v[0], b = v[1], c = v[2], d = v[3];
    const acc_t cx = p[0], cy = p[1], w = p[2], h = p[3];
    const common::Box<acc_t> r = kDecode ? common::decode_box(a, b, c, d, cx, cy, w, h, w_center, w_size)
                                         : common::encode_box(a, b, c, d, cx, cy, w, h, w_center, w_size);
    scalar_t* o = out + 4 * k;
    o[0] = static_cast<scalar_t>(r.x1);
    o[1] = static_cast<scalar_t>(r.y1);
    o[2] = static_cast<scalar_t>(r.x2);
    o[3] = static_cast<scalar_t>(r.y2);
  }
}

template <bool kDecode>
at::Tensor run(const at::Tensor& in_t, const char* what, const at::Tensor& priors_t, at::ArrayRef<double> variances) {
  const auto [v_center, v_size] = check_box_coder(in_t, what, priors_t, variances);
  const c10::cuda::CUDAGuard guard(in_t.device());
  at::Tensor out = at::empty(in_t.sizes(), in_t.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor in = in_t.contiguous(), priors = priors_t.contiguous();
  const int64_t total = in.numel() / 4;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "box_coder_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    box_coder_kernel<scalar_t, acc_t, kDecode><<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
        in.data_ptr<scalar_t>(), priors.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, priors.size(0),
        static_cast<acc_t>(common::box_coder_weight(v_center)), static_cast<acc_t>(common::box_coder_weight(v_size)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor encode_boxes_cuda(const at::Tensor& boxes, const at::Tensor& priors, at::ArrayRef<double> variances) {
  return run<false>(boxes, "boxes", priors, variances);
}

at::Tensor decode_boxes_cuda(const at::Tensor& loc, const at::Tensor& priors, at::ArrayRef<double> variances) {
  return run<true>(loc, "loc", priors, variances);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) {
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace ops
}  // namespace fastladder

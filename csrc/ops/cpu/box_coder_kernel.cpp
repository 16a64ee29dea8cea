// CPU kernels of fastladder::encode_boxes and fastladder::decode_boxes: a parallel loop over boxes;
// the arithmetic is common/box_coder.h, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/box_coder.h"
#include "ops/common/box_coder.h"

namespace fastladder {
namespace ops {

namespace {

enum class Direction { kEncode, kDecode };

template <typename scalar_t>
void box_coder_kernel(const at::Tensor& in, const at::Tensor& priors, at::Tensor& out, double v_center_d,
                      double v_size_d, Direction direction) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* ip = in.data_ptr<scalar_t>();
  const scalar_t* pp = priors.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t num_priors = priors.size(0), total = in.numel() / 4;
  const acc_t w_center = static_cast<acc_t>(common::box_coder_weight(v_center_d));
  const acc_t w_size = static_cast<acc_t>(common::box_coder_weight(v_size_d));
  at::parallel_for(0, total, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const scalar_t* v = ip + 4 * k;
      const scalar_t* p = pp + 4 * (k % num_priors);
      const acc_t a = static_cast<acc_t>(v[0]), b = static_cast<acc_t>(v[1]), c = static_cast<acc_t>(v[2]),
                  d = static_cast<acc_t>(v[3]);
      const acc_t cx = static_cast<acc_t>(p[0]), cy = static_cast<acc_t>(p[1]), w = static_cast<acc_t>(p[2]),
                  h = static_cast<acc_t>(p[3]);
      const common::Box<acc_t> r = direction == Direction::kDecode
                                       ? common::decode_box(a, b, c, d, cx, cy, w, h, w_center, w_size)
                                       : common::encode_box(a, b, c, d, cx, cy, w, h, w_center, w_size);
      scalar_t* o = op + 4 * k;
      o[0] = static_cast<scalar_t>(r.x1);
      o[1] = static_cast<scalar_t>(r.y1);
      o[2] = static_cast<scalar_t>(r.x2);
      o[3] = static_cast<scalar_t>(r.y2);
    }
  });
}

at::Tensor run(const at::Tensor& in_t, const char* what, const at::Tensor& priors_t, at::ArrayRef<double> variances,
               Direction direction) {
  const auto [v_center, v_size] = check_box_coder(in_t, what, priors_t, variances);
  at::Tensor out = at::empty(in_t.sizes(), in_t.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor in = in_t.contiguous(), priors = priors_t.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "box_coder_cpu", [&] {
    box_coder_kernel<scalar_t>(in, priors, out, v_center, v_size, direction);
  });
  return out;
}

at::Tensor encode_boxes_cpu(const at::Tensor& boxes, const at::Tensor& priors, at::ArrayRef<double> variances) {
  return run(boxes, "boxes", priors, variances, Direction::kEncode);
}

at::Tensor decode_boxes_cpu(const at::Tensor& loc, const at::Tensor& priors, at::ArrayRef<double> variances) {
  return run(loc, "loc", priors, variances, Direction::kDecode);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace ops
}  // namespace fastladder

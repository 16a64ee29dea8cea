// Schemas and argument checks of fastladder::encode_boxes and fastladder::decode_boxes (kernels:
// cpu/ and cuda/box_coder_kernel).
#include "ops/box_coder.h"

#include <torch/library.h>

#include <cmath>

namespace fastladder {
namespace ops {

std::pair<double, double> check_box_coder(const at::Tensor& boxes, const char* what, const at::Tensor& priors,
                                          at::ArrayRef<double> variances) {
  TORCH_CHECK_VALUE(priors.dim() == 2 && priors.size(1) == 4, "priors must be a [P, 4] tensor of (cx, cy, w, h), got shape ",
                    priors.sizes());
  TORCH_CHECK_VALUE(boxes.dim() >= 2 && boxes.size(-1) == 4, what, " must be a [..., P, 4] tensor, got shape ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(boxes.size(-2) == priors.size(0), what, " has ", boxes.size(-2), " boxes per row but there are ",
                    priors.size(0), " priors (", what, " ", boxes.sizes(), ", priors ", priors.sizes(), ")");
  TORCH_CHECK_VALUE(at::isFloatingType(boxes.scalar_type()), what, " must be floating point, got ",
                    boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.scalar_type() == priors.scalar_type(), what, " and priors must have the same dtype, got ",
                    boxes.scalar_type(), " and ", priors.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == priors.device(), what, " and priors must be on the same device, got ",
                    boxes.device(), " and ", priors.device());
  TORCH_CHECK_VALUE(variances.size() == 2, "variances must be two numbers (center, size), got ", variances.size());
  TORCH_CHECK_VALUE(std::isfinite(variances[0]) && std::isfinite(variances[1]) && variances[0] > 0 && variances[1] > 0,
                    "variances must be positive and finite, got (", variances[0], ", ", variances[1], ")");
  return {variances[0], variances[1]};
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // boxes [..., P, 4] (x1, y1, x2, y2), priors [P, 4] (cx, cy, w, h) -> offsets [..., P, 4].
  m.def("encode_boxes(Tensor boxes, Tensor priors, float[] variances) -> Tensor");
  // offsets [..., P, 4], priors [P, 4] -> boxes [..., P, 4] (x1, y1, x2, y2).
  m.def("decode_boxes(Tensor loc, Tensor priors, float[] variances) -> Tensor");
}

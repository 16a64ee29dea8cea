// Schema and argument checks of fastladder::box_iou (kernels: cpu/ and cuda/box_iou_kernel).
#include "ops/box_iou.h"

#include <torch/library.h>

namespace fastladder {
namespace ops {

void check_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK_VALUE(boxes1.dim() == 2 && boxes1.size(1) == 4, "boxes1 must be an [N, 4] tensor of (x1, y1, x2, y2), got shape ",
                    boxes1.sizes());
  TORCH_CHECK_VALUE(boxes2.dim() == 2 && boxes2.size(1) == 4, "boxes2 must be an [M, 4] tensor of (x1, y1, x2, y2), got shape ",
                    boxes2.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(boxes1.scalar_type()), "boxes1 must be floating point, got ",
                    boxes1.scalar_type());
  TORCH_CHECK_VALUE(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype, got ",
                    boxes1.scalar_type(), " and ", boxes2.scalar_type());
  TORCH_CHECK_VALUE(boxes1.device() == boxes2.device(), "boxes1 and boxes2 must be on the same device, got ",
                    boxes1.device(), " and ", boxes2.device());
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // [N, 4] x [M, 4] -> [N, M] in the boxes' dtype (computed in float for half/bfloat16).
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}

// Schemas and argument checks of fastladder::nms and fastladder::batched_nms (kernels: cpu/ and
// cuda/nms_kernel).
#include "ops/nms.h"

#include <torch/library.h>

#include <cmath>

namespace fastladder {
namespace ops {

void check_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4,
                    "boxes must be an [N, 4] tensor of (x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "scores must be an [N] tensor with one score per box, got scores ", scores.sizes(), " for boxes ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(boxes.scalar_type()), "boxes must be floating point, got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.scalar_type() == scores.scalar_type(), "boxes and scores must have the same dtype, got ",
                    boxes.scalar_type(), " and ", scores.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == scores.device(), "boxes and scores must be on the same device, got ",
                    boxes.device(), " and ", scores.device());
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, "iou_threshold must be in [0, 1], got ",
                    iou_threshold);
}

void check_batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold) {
  check_nms(boxes, scores, iou_threshold);
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
                    "idxs must be an [N] tensor with one category per box, got idxs ", idxs.sizes(), " for boxes ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), "idxs must be an integer tensor, got ",
                    idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), "idxs must be on the boxes' device (", boxes.device(), "), got ",
                    idxs.device());
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // Indices (int64) of the kept boxes, by decreasing score. Boxes or scores that are not finite are
  // never kept and never suppress.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // As nms, with boxes of different idxs never suppressing each other.
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}

// nms and batched_nms: greedy non-maximum suppression with torchvision's semantics. Declarations
// shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

// boxes [N, 4] floating, scores [N] of the same dtype and device, iou_threshold in [0, 1].
void check_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

// As check_nms, plus idxs [N] integer on the same device.
void check_batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold);

}  // namespace ops
}  // namespace fastladder

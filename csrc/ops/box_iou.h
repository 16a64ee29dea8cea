// box_iou: pairwise IoU of two sets of (x1, y1, x2, y2) boxes. Declarations shared by the CPU and
// CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

// boxes1 [N, 4], boxes2 [M, 4], same floating dtype and device; raises naming the shapes seen.
void check_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace ops
}  // namespace fastladder

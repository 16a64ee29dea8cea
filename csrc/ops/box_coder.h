// encode_boxes and decode_boxes: SSD center-size box coding against priors (cx, cy, w, h).
// Declarations shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace fastladder {
namespace ops {

// `boxes` [..., P, 4] (xyxy boxes for encode, offsets for decode, named by `what`), priors [P, 4],
// same floating dtype and device, two positive finite variances. Returns (v_center, v_size).
std::pair<double, double> check_box_coder(const at::Tensor& boxes, const char* what, const at::Tensor& priors,
                                          at::ArrayRef<double> variances);

}  // namespace ops
}  // namespace fastladder

// bn_relu: y = max(x * scale[c] + shift[c], 0), inference BatchNorm folded to a per-channel affine.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/layout.h"

namespace fastladder {
namespace ops {

// Checks x (4-D [N, C, H, W], floating), scale and shift ([C], x's dtype and device).
void check_bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift);

// Whether every (n, c) plane of x is one contiguous H*W run (NCHW, or a channel slice of it such
// as a DenseNet buffer prefix): the kernels then read x in place, without a copy.
inline bool planes_contiguous(const at::Tensor& x) {
  return x.stride(3) == 1 && (x.size(2) == 1 || x.stride(2) == x.size(3));
}

}  // namespace ops
}  // namespace fastladder

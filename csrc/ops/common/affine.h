// Per-channel affine (inference BatchNorm folded to y = x * scale + shift) and ReLU, with the
// gradient rules that the backward kernels share.
#pragma once

#include "ops/common/macros.h"
#include "ops/common/rounding.h"

namespace fastladder {
namespace common {

// ReLU alone (NaN passes through, as in torch.relu); rounding commutes with it, so it may run on
// stored outputs.
template <typename T>
FL_INLINE T relu_value(T x) {
  return x < T(0) ? T(0) : x;
}

// x * scale + shift, the product rounded on its own (no FMA: CUDA rounds as the CPU, rounding.h).
template <typename acc_t>
FL_INLINE acc_t affine(acc_t x, acc_t scale, acc_t shift) {
  return mul_rn(x, scale) + shift;
}

template <typename acc_t>
FL_INLINE acc_t affine_relu(acc_t x, acc_t scale, acc_t shift, bool relu) {
  const acc_t y = affine(x, scale, shift);
  return relu ? relu_value(y) : y;
}

// d loss / d pre-activation, given d loss / d output and the recomputed pre-activation y. As
// torch's threshold_backward: the gradient passes only where the output is > 0.
template <typename acc_t>
FL_INLINE acc_t relu_grad(acc_t grad_out, acc_t y, bool relu) {
  return (relu && !(y > acc_t(0))) ? acc_t(0) : grad_out;
}

}  // namespace common
}  // namespace fastladder

// Numerically stable softmax over one row of class logits (the SSD confidence head), shared by the
// CPU and CUDA ssd_postprocess kernels: p_c = exp(x_c - max) / sum_k exp(x_k - max).
#pragma once

#include <stdint.h>

#include "ops/common/box_coder.h"
#include "ops/common/macros.h"

namespace fastladder {
namespace common {

template <typename acc_t>
struct SoftmaxRow {
  acc_t max;      // the row's largest logit
  acc_t inv_sum;  // 1 / sum_k exp(x_k - max)
};

// One pass for the max, one for the sum. A NaN or +inf logit makes the sum, and so every
// probability of the row, NaN (as in F.softmax); callers drop NaN scores.
template <typename acc_t, typename scalar_t>
FL_INLINE SoftmaxRow<acc_t> softmax_row(const scalar_t* logits, int64_t classes) {
  acc_t max = static_cast<acc_t>(logits[0]);
  for (int64_t c = 1; c < classes; ++c) {
    const acc_t v = static_cast<acc_t>(logits[c]);
    max = v > max ? v : max;
  }
  acc_t sum = acc_t(0);
  for (int64_t c = 0; c < classes; ++c) sum += fl_exp(static_cast<acc_t>(logits[c]) - max);
  // a NaN logit is a NaN term; max = +inf or all logits -inf give inf - inf = NaN terms
  return SoftmaxRow<acc_t>{max, acc_t(1) / sum};
}

template <typename acc_t>
FL_INLINE acc_t softmax_probability(acc_t logit, SoftmaxRow<acc_t> row) {
  return fl_exp(logit - row.max) * row.inv_sum;
}

}  // namespace common
}  // namespace fastladder

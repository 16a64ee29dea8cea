// Bilinear interpolation with exactly PyTorch's source-index rule (ATen UpSample.h), shared by the
// CPU and CUDA kernels of upsample_concat. One axis at a time: the 2-D weights are products.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/common/macros.h"
#include "ops/common/rounding.h"

namespace fastladder {
namespace common {

// Ratio of input to output coordinates, as ATen's area_pixel_compute_scale when called with size=.
template <typename acc_t>
FL_INLINE acc_t bilinear_scale(int64_t in_size, int64_t out_size, bool align_corners) {
  if (align_corners) {
    return out_size > 1 ? static_cast<acc_t>(in_size - 1) / static_cast<acc_t>(out_size - 1) : acc_t(0);
  }
  return static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
}

// The two input indices an output index reads along one axis, and their weights (l0 + l1 == 1).
template <typename acc_t>
struct AxisTap {
  int64_t i0;
  int64_t i1;
  acc_t l0;
  acc_t l1;
};

template <typename acc_t>
FL_INLINE AxisTap<acc_t> bilinear_tap(int64_t out_index, int64_t in_size, int64_t out_size, acc_t scale,
                                      bool align_corners) {
  AxisTap<acc_t> tap;
  if (in_size == out_size) {  // ATen copies; the formula below would give the same, but only up to rounding
    tap.i0 = tap.i1 = out_index;
    tap.l0 = acc_t(1);
    tap.l1 = acc_t(0);
    return tap;
  }
  // mul_rn: the products round on their own on CUDA too (no FMA), so both backends pick the same taps
  acc_t src = align_corners ? mul_rn(scale, static_cast<acc_t>(out_index))
                            : mul_rn(scale, static_cast<acc_t>(out_index) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  int64_t i0 = static_cast<int64_t>(src);  // floor: src >= 0
  if (i0 > in_size - 1) i0 = in_size - 1;
  acc_t l1 = src - static_cast<acc_t>(i0);
  l1 = l1 < acc_t(0) ? acc_t(0) : (l1 > acc_t(1) ? acc_t(1) : l1);
  tap.i0 = i0;
  tap.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  tap.l1 = l1;
  tap.l0 = acc_t(1) - l1;
  return tap;
}

// The interpolated value from the four corners, in ATen's CUDA expression order; every product
// rounded on its own (the CPU's rounding, also on CUDA: rounding.h).
template <typename acc_t>
FL_INLINE acc_t bilinear_combine(const AxisTap<acc_t>& h, const AxisTap<acc_t>& w, acc_t x00, acc_t x01,
                                 acc_t x10, acc_t x11) {
  return mul_rn(h.l0, mul_rn(w.l0, x00) + mul_rn(w.l1, x01)) + mul_rn(h.l1, mul_rn(w.l0, x10) + mul_rn(w.l1, x11));
}

// Weight with which output index `out_index` reads input index `in_index` (0 when it does not).
template <typename acc_t>
FL_INLINE acc_t bilinear_weight(const AxisTap<acc_t>& tap, int64_t in_index) {
  acc_t weight = acc_t(0);
  if (tap.i0 == in_index) weight += tap.l0;
  if (tap.i1 == in_index) weight += tap.l1;
  return weight;
}

// The outputs that read input index i along one axis, as one range [first, end): the taps are
// monotone in the output index (i0 and i1 never decrease, i1 - i0 <= 1), so output o reads i
// exactly when i1(o) >= i and i0(o) <= i; both bounds by binary search. The same outputs, in the
// same order, as bilinear_transpose's list for i (the weights: bilinear_weight of each output's tap).
template <typename acc_t>
FL_INLINE void bilinear_readers(int64_t i, int64_t in_size, int64_t out_size, acc_t scale, bool align_corners,
                                int64_t& first, int64_t& end) {
  int64_t lo = 0, hi = out_size;  // first o with i1(o) >= i
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (bilinear_tap<acc_t>(mid, in_size, out_size, scale, align_corners).i1 >= i) hi = mid;
    else lo = mid + 1;
  }
  first = lo;
  hi = out_size;  // first o with i0(o) > i
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (bilinear_tap<acc_t>(mid, in_size, out_size, scale, align_corners).i0 > i) hi = mid;
    else lo = mid + 1;
  }
  end = lo;
}

// The transpose of one axis of the interpolation, for gather-based (deterministic) backward passes:
// for every input index i, the output indices that read it, in increasing order, with their weights.
// CSR layout: entries [offsets[i], offsets[i + 1]) of `outputs` and `weights` belong to input i.
template <typename acc_t>
struct AxisTranspose {
  std::vector<int64_t> offsets;  // in_size + 1
  std::vector<int64_t> outputs;
  std::vector<acc_t> weights;
};

template <typename acc_t>
inline AxisTranspose<acc_t> bilinear_transpose(int64_t in_size, int64_t out_size, bool align_corners) {
  const acc_t scale = bilinear_scale<acc_t>(in_size, out_size, align_corners);
  AxisTranspose<acc_t> t;
  std::vector<int64_t> counts(static_cast<size_t>(in_size), 0);
  for (int64_t o = 0; o < out_size; ++o) {
    const AxisTap<acc_t> tap = bilinear_tap<acc_t>(o, in_size, out_size, scale, align_corners);
    counts[tap.i0] += 1;
    if (tap.i1 != tap.i0) counts[tap.i1] += 1;
  }
  t.offsets.assign(static_cast<size_t>(in_size) + 1, 0);
  for (int64_t i = 0; i < in_size; ++i) t.offsets[i + 1] = t.offsets[i] + counts[i];
  t.outputs.resize(static_cast<size_t>(t.offsets[in_size]));
  t.weights.resize(static_cast<size_t>(t.offsets[in_size]));
  std::vector<int64_t> next(t.offsets.begin(), t.offsets.end() - 1);
  for (int64_t o = 0; o < out_size; ++o) {  // increasing o: every input's list comes out sorted
    const AxisTap<acc_t> tap = bilinear_tap<acc_t>(o, in_size, out_size, scale, align_corners);
    t.outputs[next[tap.i0]] = o;
    t.weights[next[tap.i0]++] = bilinear_weight(tap, tap.i0);
    if (tap.i1 != tap.i0) {
      t.outputs[next[tap.i1]] = o;
      t.weights[next[tap.i1]++] = bilinear_weight(tap, tap.i1);
    }
  }
  return t;
}

}  // namespace common
}  // namespace fastladder

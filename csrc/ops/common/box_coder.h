// SSD center-size box coding (Liu et al. 2016), shared by encode_boxes, decode_boxes and
// ssd_postprocess on CPU and CUDA.
//
// Priors are (cx, cy, w, h); boxes are (x1, y1, x2, y2); offsets are
//   dx = (cx - prior_cx) / prior_w / v_center      dw = log(w / prior_w) / v_size
//   dy = (cy - prior_cy) / prior_h / v_center      dh = log(h / prior_h) / v_size
// with variances (v_center, v_size) = (0.1, 0.2) in SSD. The functions take the weights
// 1 / variance, as torchvision's BoxCoder does. Decoding equals torchvision's BoxCoder
// with weights (1/v_center, 1/v_center, 1/v_size, 1/v_size) = (10, 10, 5, 5), including its clamp
// of dw, dh at log(1000 / 16) (which keeps exp() finite for wild regressions; the original SSD has
// no clamp).
#pragma once

#include <math.h>

#include "ops/common/macros.h"
#include "ops/common/rounding.h"

namespace fastladder {
namespace common {

// log(1000 / 16): torchvision's BoxCoder bbox_xform_clip.
constexpr double kBoxScaleClip = 4.135166556742356;

// exp and log: the platform's (glibc on the CPU, CUDA's libdevice on the GPU). They are not
// correctly rounded on either side and may differ in the last bits: CUDA's expf/logf are within
// 2 ulp / 1 ulp of the exact value, glibc's within 1 ulp. Results that go through them (decoded box
// sizes, encoded dw/dh, softmax probabilities) agree between CPU and CUDA to a few ulp (relative
// 1e-6 in float), not bit for bit; everything else here rounds identically (mul_rn, no FMA).
FL_INLINE float fl_exp(float x) { return expf(x); }
FL_INLINE double fl_exp(double x) { return exp(x); }
FL_INLINE float fl_log(float x) { return logf(x); }
FL_INLINE double fl_log(double x) { return log(x); }

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// The weights torchvision's BoxCoder divides by: 1 / variance, computed in double (1 / 0.1 = 10
// and 1 / 0.2 = 5 exactly), so that the decoded boxes round as torchvision's do.
inline double box_coder_weight(double variance) { return 1.0 / variance; }

// Offsets (dx, dy, dw, dh) of a prior -> an (x1, y1, x2, y2) box, in torchvision's operation order:
// cx = dx / w_center * prior_w + prior_cx, w = exp(min(dw / w_size, clip)) * prior_w. A NaN offset
// gives a NaN box (the clamp lets NaN through, as torch.clamp does), +inf in dw/dh is clamped,
// -inf gives a zero-size box.
template <typename T>
FL_INLINE Box<T> decode_box(T dx, T dy, T dw, T dh, T prior_cx, T prior_cy, T prior_w, T prior_h, T w_center,
                            T w_size) {
  const T clip = static_cast<T>(kBoxScaleClip);
  T sw = dw / w_size, sh = dh / w_size;
  if (sw > clip) sw = clip;
  if (sh > clip) sh = clip;
  const T cx = mul_rn(dx / w_center, prior_w) + prior_cx;
  const T cy = mul_rn(dy / w_center, prior_h) + prior_cy;
  const T half_w = mul_rn(T(0.5), mul_rn(fl_exp(sw), prior_w));
  const T half_h = mul_rn(T(0.5), mul_rn(fl_exp(sh), prior_h));
  return Box<T>{cx - half_w, cy - half_h, cx + half_w, cy + half_h};
}

// An (x1, y1, x2, y2) box -> its offsets from a prior, stored as a Box (dx, dy, dw, dh), in
// torchvision's BoxCoder.encode order: dx = w_center * (cx - prior_cx) / prior_w,
// dw = w_size * log(w / prior_w). A box of zero width or height has dw or dh = -inf (log 0).
template <typename T>
FL_INLINE Box<T> encode_box(T x1, T y1, T x2, T y2, T prior_cx, T prior_cy, T prior_w, T prior_h, T w_center,
                            T w_size) {
  const T w = x2 - x1, h = y2 - y1;
  const T cx = x1 + mul_rn(T(0.5), w), cy = y1 + mul_rn(T(0.5), h);
  return Box<T>{w_center * (cx - prior_cx) / prior_w, w_center * (cy - prior_cy) / prior_h,
                w_size * fl_log(w / prior_w), w_size * fl_log(h / prior_h)};
}

// Clamp each coordinate to [lo, hi] (torchvision's clip_boxes_to_image with lo = 0, hi = the size).
template <typename T>
FL_INLINE Box<T> clip_box(Box<T> b, T lo, T hi) {
  auto clamp = [lo, hi](T v) { return v < lo ? lo : (v > hi ? hi : v); };
  return Box<T>{clamp(b.x1), clamp(b.y1), clamp(b.x2), clamp(b.y2)};
}

}  // namespace common
}  // namespace fastladder

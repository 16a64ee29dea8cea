// Intersection-over-union of axis-aligned (x1, y1, x2, y2) boxes, with torchvision's conventions:
// areas are (x2 - x1) * (y2 - y1) without the "+1" of pixel-inclusive boxes, and the overlap of two
// boxes is inter / (area_a + area_b - inter). Used by box_iou, nms, batched_nms and ssd_postprocess
// on CPU and CUDA alike, so that both backends suppress exactly the same boxes.
#pragma once

#include <cmath>

#include "ops/common/macros.h"
#include "ops/common/rounding.h"

namespace fastladder {
namespace common {

template <typename T>
FL_INLINE T fl_max(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
FL_INLINE T fl_min(T a, T b) {
  return a < b ? a : b;
}

// Area as torchvision computes it: no +1, and no clamping (an inverted box has a signed area; it
// never overlaps anything, see intersection_area).
template <typename T>
FL_INLINE T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(x2 - x1, y2 - y1);
}

// Area of the intersection; 0 when the boxes do not overlap or either box is inverted.
template <typename T>
FL_INLINE T intersection_area(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T w = fl_max(fl_min(ax2, bx2) - fl_max(ax1, bx1), T(0));
  const T h = fl_max(fl_min(ay2, by2) - fl_max(ay1, by1), T(0));
  return mul_rn(w, h);
}

// The IoU as box_iou reports it: inter / union, and 0 when the union is not positive (two zero-area
// boxes: torchvision's box_iou gives 0/0 = NaN there, its nms treats it as "no overlap"; 0 says the
// same thing without a NaN).
template <typename T>
FL_INLINE T iou_from_areas(T inter, T area_a, T area_b) {
  const T uni = area_a + area_b - inter;
  return uni > T(0) ? inter / uni : T(0);
}

template <typename T>
FL_INLINE T box_iou(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  return iou_from_areas(intersection_area(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2), box_area(ax1, ay1, ax2, ay2),
                        box_area(bx1, by1, bx2, by2));
}

// The suppression test of nms: IoU strictly greater than the threshold, with the IoU rounded to T
// exactly as torchvision's kernel does (one division), so that the same pairs suppress. Branch-free
// (a zero union gives 0/0 = NaN, and NaN > t is false: "no overlap") so that loops over many boxes
// vectorize. `threshold` must come from nms_threshold<T>().
template <typename T>
FL_INLINE bool iou_above(T inter, T area_a, T area_b, T threshold) {
  return inter / (area_a + area_b - inter) > threshold;
}

// torchvision compares the T-rounded IoU with the double threshold t. For a float x, x > t (in
// double) holds exactly when x > the largest float that is <= t, so that value lets the whole test
// run in T (float on the vector units) with the same outcome. Host only: computed once per call.
template <typename T>
inline T nms_threshold(double t) {
  T below = static_cast<T>(t);
  if (static_cast<double>(below) > t) below = std::nextafter(below, T(-1));
  return below;
}

// Whether all four coordinates are finite (NaN and +-inf fail); x - x is 0 only for finite x.
template <typename T>
FL_INLINE bool box_is_finite(T x1, T y1, T x2, T y2) {
  return (x1 - x1) == T(0) && (y1 - y1) == T(0) && (x2 - x2) == T(0) && (y2 - y2) == T(0);
}

template <typename T>
FL_INLINE bool is_finite(T x) {
  return (x - x) == T(0);
}

}  // namespace common
}  // namespace fastladder

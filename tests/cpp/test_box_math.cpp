// Plain C++ tests of the box math shared by the CPU and CUDA kernels (csrc/ops/common/iou.h,
// box_coder.h, softmax.h): no torch. Build and run:
//   g++ -std=c++17 -I csrc tests/cpp/test_box_math.cpp -o test_box_math && ./test_box_math
#include <cmath>
#include <cstdio>
#include <limits>

#include "ops/common/box_coder.h"
#include "ops/common/iou.h"
#include "ops/common/softmax.h"

namespace {

int passed = 0, failed = 0;

void check(bool ok, const char* what, int line) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED line %d: %s\n", line, what);
  }
}

#define CHECK(cond) check((cond), #cond, __LINE__)

bool near(double a, double b, double tol) { return std::fabs(a - b) <= tol; }

using fastladder::common::Box;
namespace common = fastladder::common;

void test_iou() {
  // [0, 2] x [0, 2] and [1, 3] x [1, 3]: inter 1, union 7
  CHECK(near(common::box_iou<double>(0, 0, 2, 2, 1, 1, 3, 3), 1.0 / 7.0, 1e-15));
  CHECK(common::box_iou<float>(0, 0, 2, 2, 0, 0, 2, 2) == 1.0f);
  // symmetric, no +1 in the areas
  CHECK(common::box_iou<float>(0, 0, 4, 1, 1, 0, 2, 1) == common::box_iou<float>(1, 0, 2, 1, 0, 0, 4, 1));
  CHECK(near(common::box_iou<double>(0, 0, 4, 1, 1, 0, 2, 1), 0.25, 1e-15));
  // touching edges and disjoint boxes do not overlap
  CHECK(common::box_iou<float>(0, 0, 1, 1, 1, 0, 2, 1) == 0.0f);
  CHECK(common::box_iou<float>(0, 0, 1, 1, 5, 5, 6, 6) == 0.0f);
  // zero-area boxes: IoU 0, not NaN (torchvision's box_iou would give 0/0)
  CHECK(common::box_iou<float>(1, 1, 1, 1, 1, 1, 1, 1) == 0.0f);
  CHECK(common::box_iou<float>(0, 0, 2, 0, 0, 0, 2, 2) == 0.0f);
  // an inverted box intersects nothing
  CHECK(common::intersection_area<float>(2, 2, 0, 0, 0, 0, 2, 2) == 0.0f);
  CHECK(common::box_area<float>(0, 0, 3, 2) == 6.0f);
}

void test_suppression_test() {
  const float t = common::nms_threshold<float>(0.5);
  CHECK(t == 0.5f);
  // IoU exactly at the threshold does not suppress; above does
  CHECK(!common::iou_above<float>(1.0f, 1.5f, 1.5f, t));  // 1 / 2
  CHECK(common::iou_above<float>(1.0f, 1.4f, 1.5f, t));
  // 0 / 0 (two empty boxes) is NaN: no suppression
  CHECK(!common::iou_above<float>(0.0f, 0.0f, 0.0f, common::nms_threshold<float>(0.0)));
  // a threshold that is not a float: x > t in double exactly when x > nms_threshold<float>(t)
  const double odd = 0.45;
  const float below = common::nms_threshold<float>(odd);
  CHECK(static_cast<double>(below) <= odd);
  CHECK(static_cast<double>(std::nextafter(below, 1.0f)) > odd);
  int disagreements = 0;
  for (float x = 0.4499f; x < 0.4501f; x = std::nextafter(x, 1.0f))
    disagreements += ((static_cast<double>(x) > odd) != (x > below)) ? 1 : 0;
  CHECK(disagreements == 0);
  CHECK(common::nms_threshold<double>(odd) == odd);
}

void test_finite() {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK(common::box_is_finite<float>(0, 1, 2, 3));
  CHECK(!common::box_is_finite<float>(0, nan, 2, 3));
  CHECK(!common::box_is_finite<float>(0, 1, inf, 3));
  CHECK(!common::box_is_finite<float>(-inf, 1, 2, 3));
  CHECK(common::is_finite(1.0) && !common::is_finite(nan) && !common::is_finite(-inf));
}

void test_box_coder() {
  const double wc = common::box_coder_weight(0.1), ws = common::box_coder_weight(0.2);
  CHECK(wc == 10.0 && ws == 5.0);
  // zero offsets give the prior itself
  Box<double> b = common::decode_box<double>(0, 0, 0, 0, 0.5, 0.4, 0.2, 0.1, wc, ws);
  CHECK(near(b.x1, 0.4, 1e-15) && near(b.y1, 0.35, 1e-15) && near(b.x2, 0.6, 1e-15) && near(b.y2, 0.45, 1e-15));
  // dx = 1 moves the center by v_center * w; dw = 1 scales the width by exp(v_size)
  b = common::decode_box<double>(1, 0, 1, 0, 0.5, 0.5, 0.2, 0.2, wc, ws);
  const double w = 0.2 * std::exp(0.2);
  CHECK(near((b.x1 + b.x2) / 2, 0.52, 1e-15) && near(b.x2 - b.x1, w, 1e-15));
  // encode is the inverse of decode
  const Box<double> e = common::encode_box<double>(b.x1, b.y1, b.x2, b.y2, 0.5, 0.5, 0.2, 0.2, wc, ws);
  CHECK(near(e.x1, 1, 1e-12) && near(e.y1, 0, 1e-12) && near(e.x2, 1, 1e-12) && near(e.y2, 0, 1e-12));
  // torchvision's clamp: the log-scale stops at log(1000/16)
  b = common::decode_box<double>(0, 0, 100, 0, 0, 0, 1, 1, wc, ws);
  CHECK(near(b.x2 - b.x1, 1000.0 / 16, 1e-9));
  // NaN passes through the clamp; +inf is clamped; -inf gives a zero-width box
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  Box<float> f = common::decode_box<float>(0, 0, nan, 0, 0.5f, 0.5f, 0.2f, 0.2f, 10.0f, 5.0f);
  CHECK(std::isnan(f.x1) && std::isnan(f.x2) && !std::isnan(f.y1));
  f = common::decode_box<float>(0, 0, inf, -inf, 0.5f, 0.5f, 0.2f, 0.2f, 10.0f, 5.0f);
  CHECK(std::isfinite(f.x1) && std::isfinite(f.x2) && f.y1 == f.y2);
  // a zero-width box encodes to -inf
  CHECK(std::isinf(common::encode_box<float>(0.5f, 0.4f, 0.5f, 0.6f, 0.5f, 0.5f, 0.2f, 0.2f, 10.0f, 5.0f).x2));
  // clipping to the unit square
  const Box<float> c = common::clip_box(Box<float>{-0.5f, 0.2f, 1.5f, 0.9f}, 0.0f, 1.0f);
  CHECK(c.x1 == 0.0f && c.y1 == 0.2f && c.x2 == 1.0f && c.y2 == 0.9f);
}

void test_softmax() {
  const float logits[3] = {1.0f, 2.0f, 3.0f};
  const auto row = common::softmax_row<float>(logits, 3);
  const double denominator = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  float total = 0;
  for (int c = 0; c < 3; ++c) {
    const float p = common::softmax_probability(logits[c], row);
    CHECK(near(p, std::exp(logits[c]) / denominator, 1e-7));
    total += p;
  }
  CHECK(near(total, 1.0, 1e-6));
  // large logits do not overflow
  const double big[2] = {1000.0, 1000.0};
  CHECK(near(common::softmax_probability(big[0], common::softmax_row<double>(big, 2)), 0.5, 1e-15));
  // a NaN or +inf logit makes the whole row NaN (then dropped by the callers)
  const float bad[3] = {0.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f};
  CHECK(std::isnan(common::softmax_probability(bad[0], common::softmax_row<float>(bad, 3))));
  const float infinite[2] = {0.0f, std::numeric_limits<float>::infinity()};
  CHECK(std::isnan(common::softmax_probability(infinite[1], common::softmax_row<float>(infinite, 2))));
}

}  // namespace

int main() {
  test_iou();
  test_suppression_test();
  test_finite();
  test_box_coder();
  test_softmax();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

// Tests of csrc/ops/common/bilinear.h and affine.h: PyTorch's source-index rule, weights, and the
// CSR transpose used by the deterministic backward passes.
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "ops/common/affine.h"
#include "ops/common/bilinear.h"

using fastladder::common::AxisTap;
using fastladder::common::bilinear_scale;
using fastladder::common::bilinear_tap;
using fastladder::common::bilinear_transpose;
using fastladder::common::bilinear_weight;

// 1-D interpolation of `in` to `out_size` points with the taps.
static std::vector<double> interpolate(const std::vector<double>& in, int64_t out_size, bool align) {
  const int64_t n = static_cast<int64_t>(in.size());
  const double scale = bilinear_scale<double>(n, out_size, align);
  std::vector<double> out(out_size);
  for (int64_t o = 0; o < out_size; ++o) {
    const AxisTap<double> t = bilinear_tap<double>(o, n, out_size, scale, align);
    out[o] = t.l0 * in[t.i0] + t.l1 * in[t.i1];
  }
  return out;
}

static void test_known_values() {
  // 2x, align_corners=False: output 0 reads input 0 only (src clamped at 0), output 1 reads
  // 0.25 of input 0 and 0.75 of input 1 ... (PyTorch: [1, 1.25, 1.75, 2] for input [1, 2])
  const auto up = interpolate({1.0, 2.0}, 4, false);
  CHECK_NEAR(up[0], 1.0, 1e-12);
  CHECK_NEAR(up[1], 1.25, 1e-12);
  CHECK_NEAR(up[2], 1.75, 1e-12);
  CHECK_NEAR(up[3], 2.0, 1e-12);
  // align_corners=True: the end points coincide: [1, 4/3, 5/3, 2]
  const auto aligned = interpolate({1.0, 2.0}, 4, true);
  CHECK_NEAR(aligned[1], 4.0 / 3.0, 1e-12);
  CHECK_NEAR(aligned[3], 2.0, 1e-12);
  // one output with align_corners=True reads input 0 (scale 0)
  CHECK_NEAR(interpolate({3.0, 5.0, 7.0}, 1, true)[0], 3.0, 1e-12);
  // one input: every output copies it
  for (double v : interpolate({4.5}, 5, false)) CHECK_NEAR(v, 4.5, 1e-12);
  // equal sizes: a copy, for both corner modes
  for (bool align : {false, true}) {
    const auto same = interpolate({1.0, -2.0, 3.5}, 3, align);
    CHECK_NEAR(same[1], -2.0, 0.0);
  }
}

static void test_tap_invariants(std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> size(1, 40);
  for (int trial = 0; trial < 500; ++trial) {
    const int64_t in = size(rng), out = size(rng);
    const bool align = trial % 2 == 0;
    const float scale = bilinear_scale<float>(in, out, align);
    for (int64_t o = 0; o < out; ++o) {
      const AxisTap<float> t = bilinear_tap<float>(o, in, out, scale, align);
      CHECK(t.i0 >= 0 && t.i0 < in && t.i1 >= t.i0 && t.i1 < in && t.i1 - t.i0 <= 1);
      CHECK(t.l0 >= 0.0f && t.l1 >= 0.0f && t.l1 <= 1.0f);
      CHECK_NEAR(t.l0 + t.l1, 1.0f, 1e-6f);
    }
  }
}

// The transpose lists every (output, weight) pair of the forward taps exactly once, sorted by output.
static void test_transpose(std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> size(1, 30);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t in = size(rng), out = size(rng);
    const bool align = trial % 2 == 1;
    const auto t = bilinear_transpose<double>(in, out, align);
    CHECK(static_cast<int64_t>(t.offsets.size()) == in + 1);
    // dense matrix from the forward taps vs from the transpose
    std::vector<double> forward(in * out, 0.0), backward(in * out, 0.0);
    const double scale = bilinear_scale<double>(in, out, align);
    for (int64_t o = 0; o < out; ++o) {
      const AxisTap<double> tap = bilinear_tap<double>(o, in, out, scale, align);
      forward[tap.i0 * out + o] = bilinear_weight(tap, tap.i0);
      forward[tap.i1 * out + o] = bilinear_weight(tap, tap.i1);
    }
    bool sorted = true;
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t k = t.offsets[i]; k < t.offsets[i + 1]; ++k) {
        backward[i * out + t.outputs[k]] += t.weights[k];
        if (k > t.offsets[i] && t.outputs[k] <= t.outputs[k - 1]) sorted = false;
      }
    }
    CHECK(sorted);
    double max_diff = 0.0;
    for (int64_t k = 0; k < in * out; ++k) max_diff = std::max(max_diff, std::fabs(forward[k] - backward[k]));
    CHECK(max_diff == 0.0);
  }
}

// The device-built gather ranges of the CUDA backward list the same outputs, in the same order, as
// the transpose (float and double, both corner modes, up- and downsampling, equal sizes).
static void test_readers_match_transpose(std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> size(1, 70);
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t in = size(rng), out = trial % 7 == 0 ? in : size(rng);
    const bool align = trial % 2 == 1;
    const auto t = bilinear_transpose<float>(in, out, align);
    const float scale = bilinear_scale<float>(in, out, align);
    bool same = true;
    for (int64_t i = 0; i < in; ++i) {
      int64_t first = -1, end = -1;
      fastladder::common::bilinear_readers<float>(i, in, out, scale, align, first, end);
      same = same && end - first == t.offsets[i + 1] - t.offsets[i];
      for (int64_t k = t.offsets[i]; same && k < t.offsets[i + 1]; ++k) {
        const int64_t o = first + (k - t.offsets[i]);
        same = t.outputs[k] == o &&
               t.weights[k] == bilinear_weight(bilinear_tap<float>(o, in, out, scale, align), i);
      }
    }
    CHECK(same);
  }
}

static void test_affine_relu() {
  using fastladder::common::affine_relu;
  using fastladder::common::relu_grad;
  CHECK(affine_relu<float>(2.0f, 3.0f, -1.0f, false) == 5.0f);
  CHECK(affine_relu<float>(-2.0f, 3.0f, 1.0f, true) == 0.0f);
  CHECK(affine_relu<float>(-2.0f, 3.0f, 1.0f, false) == -5.0f);
  CHECK(std::isnan(affine_relu<float>(NAN, 1.0f, 0.0f, true)));  // as torch.relu
  CHECK(relu_grad<float>(7.0f, 0.0f, true) == 0.0f);             // as threshold_backward at 0
  CHECK(relu_grad<float>(7.0f, 0.5f, true) == 7.0f);
  CHECK(relu_grad<float>(7.0f, -0.5f, false) == 7.0f);
}

int main() {
  std::random_device device;
  const unsigned seed = device();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  test_known_values();
  test_tap_invariants(rng);
  test_transpose(rng);
  test_readers_match_transpose(rng);
  test_affine_relu();
  return fastladder_test::summary();
}

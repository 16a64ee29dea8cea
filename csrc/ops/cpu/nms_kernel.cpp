// CPU kernels of fastladder::nms and fastladder::batched_nms: score sort, per-class grouping, then
// the greedy suppression of nms_sweep.h (whose IoU test is common/iou.h, shared with CUDA).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/common/iou.h"
#include "ops/cpu/nms_sweep.h"
#include "ops/nms.h"

namespace fastladder {
namespace ops {

namespace {

// Indices of the boxes with finite coordinates and score, by decreasing score; ties by increasing
// index (a stable sort, as torchvision's).
template <typename scalar_t, typename acc_t>
std::vector<int64_t> finite_by_score(const scalar_t* boxes, const scalar_t* scores, int64_t n) {
  std::vector<int64_t> order;
  order.reserve(n);
  if constexpr (std::is_same<acc_t, float>::value) {
    // a stable radix sort on the score key; the boxes come in index order, so ties stay by index
    std::vector<uint32_t> keys;
    std::vector<int32_t> index;
    keys.reserve(n);
    index.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* b = boxes + 4 * i;
      const float s = static_cast<float>(scores[i]);
      if (!common::is_finite(s) || !common::box_is_finite<acc_t>(b[0], b[1], b[2], b[3])) continue;
      keys.push_back(cpu::descending_key(s));
      index.push_back(static_cast<int32_t>(i));
    }
    cpu::radix_sort_by_key(keys, index);
    order.assign(index.begin(), index.end());
    return order;
  }
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * i;
    if (!common::is_finite<acc_t>(scores[i]) || !common::box_is_finite<acc_t>(b[0], b[1], b[2], b[3])) continue;
    order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [scores](int64_t a, int64_t b) {
    return static_cast<acc_t>(scores[a]) > static_cast<acc_t>(scores[b]);
  });
  return order;
}

// Dense category ids 0..G-1 for `idxs[order]`, keeping `order` within each category: returns the
// category-major order and the segment boundaries (G + 1 offsets).
std::pair<std::vector<int64_t>, std::vector<int64_t>> group_by_category(const std::vector<int64_t>& order,
                                                                        const int64_t* idxs) {
  const int64_t m = static_cast<int64_t>(order.size());
  std::vector<int64_t> grouped(m), offsets;
  if (m == 0) return {grouped, {0}};
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  for (int64_t i : order) {
    lo = std::min(lo, idxs[i]);
    hi = std::max(hi, idxs[i]);
  }
  std::vector<int64_t> dense(m);
  int64_t groups;
  // (hi - lo) computed unsigned: the full int64 range must not overflow
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  if (span < static_cast<uint64_t>(4 * m + 1024)) {
    groups = static_cast<int64_t>(span) + 1;
    for (int64_t k = 0; k < m; ++k) dense[k] = static_cast<int64_t>(static_cast<uint64_t>(idxs[order[k]]) - static_cast<uint64_t>(lo));
  } else {
    std::vector<int64_t> values(m);
    for (int64_t k = 0; k < m; ++k) values[k] = idxs[order[k]];
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    groups = static_cast<int64_t>(values.size());
    for (int64_t k = 0; k < m; ++k)
      dense[k] = std::lower_bound(values.begin(), values.end(), idxs[order[k]]) - values.begin();
  }
  offsets.assign(groups + 1, 0);
  for (int64_t k = 0; k < m; ++k) ++offsets[dense[k] + 1];
  for (int64_t g = 0; g < groups; ++g) offsets[g + 1] += offsets[g];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t k = 0; k < m; ++k) grouped[fill[dense[k]]++] = order[k];
  // drop empty categories (sparse ranges)
  std::vector<int64_t> compact{0};
  for (int64_t g = 0; g < groups; ++g)
    if (offsets[g + 1] > offsets[g]) compact.push_back(offsets[g + 1]);
  return {grouped, compact};
}

// The shared body: `order` holds the candidate boxes category by category (each category's boxes
// by decreasing score), `offsets` the category boundaries; returns the kept indices by decreasing
// score (ties by index) over all categories.
template <typename scalar_t>
at::Tensor suppress(const at::Tensor& boxes_t, const std::vector<int64_t>& by_score,
                    const std::vector<int64_t>& order, const std::vector<int64_t>& offsets, double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* boxes = boxes_t.data_ptr<scalar_t>();
  const int64_t m = static_cast<int64_t>(order.size());
  std::vector<acc_t> x1(m), y1(m), x2(m), y2(m), area(m);
  for (int64_t k = 0; k < m; ++k) {
    const scalar_t* b = boxes + 4 * order[k];
    x1[k] = static_cast<acc_t>(b[0]);
    y1[k] = static_cast<acc_t>(b[1]);
    x2[k] = static_cast<acc_t>(b[2]);
    y2[k] = static_cast<acc_t>(b[3]);
    area[k] = common::box_area(x1[k], y1[k], x2[k], y2[k]);
  }
  std::vector<uint8_t> keep(m, 0);
  const acc_t threshold = common::nms_threshold<acc_t>(iou_threshold);
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t o = offsets[g], n = offsets[g + 1] - offsets[g];
      cpu::greedy_nms(x1.data() + o, y1.data() + o, x2.data() + o, y2.data() + o, area.data() + o, n, threshold,
                      keep.data() + o);
    }
  });
  // back to the global score order
  std::vector<uint8_t> kept_index(boxes_t.size(0), 0);
  int64_t count = 0;
  for (int64_t k = 0; k < m; ++k) {
    kept_index[order[k]] = keep[k];
    count += keep[k];
  }
  at::Tensor out = at::empty({count}, boxes_t.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i : by_score)
    if (kept_index[i]) *o++ = i;
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold) {
  check_nms(boxes_in, scores_in, iou_threshold);
  const int64_t n = boxes_in.size(0);
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "nms supports fewer than 2^31 boxes, got ", n);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto by_score = finite_by_score<scalar_t, acc_t>(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), n);
    const std::vector<int64_t> offsets{0, static_cast<int64_t>(by_score.size())};
    out = suppress<scalar_t>(boxes, by_score, by_score, offsets, iou_threshold);
  });
  return out;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                           double iou_threshold) {
  check_batched_nms(boxes_in, scores_in, idxs_in, iou_threshold);
  const int64_t n = boxes_in.size(0);
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "batched_nms supports fewer than 2^31 boxes, got ", n);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor idxs = idxs_in.to(at::kLong).contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "batched_nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto by_score = finite_by_score<scalar_t, acc_t>(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), n);
    const auto grouped = group_by_category(by_score, idxs.data_ptr<int64_t>());
    out = suppress<scalar_t>(boxes, by_score, grouped.first, grouped.second, iou_threshold);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace ops
}  // namespace fastladder

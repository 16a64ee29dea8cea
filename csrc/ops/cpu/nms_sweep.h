// Greedy NMS over boxes that are already in score order, for the CPU kernels (nms, batched_nms,
// ssd_postprocess). Same decisions as torchvision's kernel (a kept box suppresses every later box
// whose IoU with it, rounded to T, is > the threshold), with less work:
//  - few boxes: each candidate is tested against the boxes kept so far, in chunks that vectorize,
//    stopping at the first chunk that holds a suppressor;
//  - many boxes: a sorted sweep. Boxes are grouped by size (powers of two of max(w, h)), each group
//    cut into horizontal strips and sorted by x1 within a strip, so that a kept box visits only the
//    boxes that can overlap it (binary searches bound the x range), and the test over that range
//    is a branch-free loop over contiguous arrays.
// Boxes with no area (w <= 0 or h <= 0) overlap nothing: they are always kept and never suppress.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "ops/common/iou.h"

namespace fastladder {
namespace ops {
namespace cpu {

// From this many boxes on the sweep beats the candidate-vs-kept test (measured on clustered boxes
// and on SSD's 400 candidates per class, where the direct test is ~1.6x faster).
constexpr int64_t kSweepMinBoxes = 1024;

template <typename T>
inline bool has_area(T x1, T y1, T x2, T y2) {
  return x2 > x1 && y2 > y1;
}

// An unsigned key whose ascending order is the ascending order of the float (-0 == +0).
inline uint32_t ascending_key(float value) {
  value += 0.0f;  // -0 -> +0: equal values must get equal keys
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// An unsigned key whose ascending order is the descending order of the float score.
inline uint32_t descending_key(float score) { return ~ascending_key(score); }

// Stable LSD radix sort of `values` by 32-bit `keys` (both permuted), 11 bits per pass: a few
// linear passes instead of a comparison sort's n log n (the sorts dominated NMS at 20k boxes).
inline void radix_sort_by_key(std::vector<uint32_t>& keys, std::vector<int32_t>& values) {
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<uint32_t> keys_tmp(n);
  std::vector<int32_t> values_tmp(n);
  constexpr int kBits = 11;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  for (int shift = 0; shift < 32; shift += kBits) {
    size_t count[kMask + 2] = {};
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & kMask) + 1];
    if (count[((keys[0] >> shift) & kMask) + 1] == n) continue;  // one digit value: already in order
    for (uint32_t d = 0; d <= kMask; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t at = count[(keys[i] >> shift) & kMask]++;
      keys_tmp[at] = keys[i];
      values_tmp[at] = values[i];
    }
    keys.swap(keys_tmp);
    values.swap(values_tmp);
  }
}

// Candidate-vs-kept: keep[r] for r in [0, n).
template <typename T>
void greedy_nms_direct(const T* x1, const T* y1, const T* x2, const T* y2, const T* area, int64_t n, T threshold,
                       uint8_t* keep) {
  constexpr int64_t kChunk = 16;
  std::vector<T> kx1(n), ky1(n), kx2(n), ky2(n), ka(n);
  int64_t kept = 0;
  for (int64_t r = 0; r < n; ++r) {
    const T bx1 = x1[r], by1 = y1[r], bx2 = x2[r], by2 = y2[r], ar = area[r];
    if (!has_area(bx1, by1, bx2, by2)) {
      keep[r] = 1;
      continue;
    }
    bool suppressed = false;
    for (int64_t j0 = 0; j0 < kept && !suppressed; j0 += kChunk) {
      const int64_t j1 = std::min(kept, j0 + kChunk);
      int any = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const T inter = common::intersection_area(kx1[j], ky1[j], kx2[j], ky2[j], bx1, by1, bx2, by2);
        any |= common::iou_above(inter, ka[j], ar, threshold) ? 1 : 0;
      }
      suppressed = any != 0;
    }
    keep[r] = suppressed ? 0 : 1;
    if (!suppressed) {
      kx1[kept] = bx1;
      ky1[kept] = by1;
      kx2[kept] = bx2;
      ky2[kept] = by2;
      ka[kept] = ar;
      ++kept;
    }
  }
}

// The sorted sweep: keep[r] for r in [0, n).
template <typename T>
class SweepNms {
 public:
  SweepNms(const T* x1, const T* y1, const T* x2, const T* y2, const T* area, int64_t n)
      : x1_(x1), y1_(y1), x2_(x2), y2_(y2), area_(area), n_(n) {
    build();
  }

  void run(T threshold, uint8_t* keep) {
    for (int64_t r = 0; r < n_; ++r) {
      const int32_t p = position_[r];
      if (p < 0) {  // no area: overlaps nothing
        keep[r] = 1;
        continue;
      }
      if (suppressed_[p]) {
        keep[r] = 0;
        continue;
      }
      keep[r] = 1;
      suppress_after(static_cast<int32_t>(r), threshold);
    }
  }

 private:
  static constexpr int kMaxBuckets = 12;
  struct Bucket {
    double max_w = 0, max_h = 0, y_min = 0, strip_h = 1;
    int64_t strips = 0, first_slot = 0;
    int64_t count = 0;
  };

  int64_t strip_of(const Bucket& b, double y) const {
    const double s = std::floor((y - b.y_min) / b.strip_h);
    return s < 0 ? 0 : (s >= static_cast<double>(b.strips) ? b.strips - 1 : static_cast<int64_t>(s));
  }

  void build() {
    position_.assign(n_, -1);
    std::vector<int32_t> bucket_of(n_, -1);
    double min_size = INFINITY;
    for (int64_t r = 0; r < n_; ++r) {
      if (!has_area(x1_[r], y1_[r], x2_[r], y2_[r])) continue;
      min_size = std::min(min_size, std::max<double>(x2_[r] - x1_[r], y2_[r] - y1_[r]));
    }
    for (int64_t r = 0; r < n_; ++r) {
      if (!has_area(x1_[r], y1_[r], x2_[r], y2_[r])) continue;
      const double size = std::max<double>(x2_[r] - x1_[r], y2_[r] - y1_[r]);
      const int level = std::ilogb(size / min_size);  // floor(log2), >= 0
      const int b = std::min(std::max(level, 0), kMaxBuckets - 1);
      bucket_of[r] = b;
      Bucket& bucket = buckets_[b];
      // widths as T computes them: the x window below must cover x2 - x1 as stored
      bucket.max_w = std::max<double>(bucket.max_w, static_cast<double>(x2_[r] - x1_[r]));
      bucket.max_h = std::max<double>(bucket.max_h, static_cast<double>(y2_[r] - y1_[r]));
      bucket.y_min = bucket.count == 0 ? static_cast<double>(y1_[r]) : std::min<double>(bucket.y_min, y1_[r]);
      y_max_[b] = bucket.count == 0 ? static_cast<double>(y1_[r]) : std::max<double>(y_max_[b], y1_[r]);
      ++bucket.count;
    }
    // Strips about one box tall (a kept box then visits 2-3 of them), with at least ~8 boxes each.
    int64_t slots = 0;
    for (int b = 0; b < kMaxBuckets; ++b) {
      Bucket& bucket = buckets_[b];
      if (bucket.count == 0) continue;
      const double range = y_max_[b] - bucket.y_min;
      const int64_t most = std::max<int64_t>(1, bucket.count / 8);
      bucket.strip_h = std::max(bucket.max_h, range / static_cast<double>(most));
      bucket.strips = std::min<int64_t>(most, static_cast<int64_t>(std::floor(range / bucket.strip_h)) + 1);
      bucket.first_slot = slots;
      slots += bucket.strips;
    }
    // Ranks by x1 (stable: ties by rank), then a stable counting sort into (bucket, strip) slots:
    // each slot ends up sorted by x1.
    std::vector<int32_t> by_x1;
    by_x1.reserve(n_);
    for (int64_t r = 0; r < n_; ++r)
      if (bucket_of[r] >= 0) by_x1.push_back(static_cast<int32_t>(r));
    if constexpr (std::is_same<T, float>::value) {
      std::vector<uint32_t> keys(by_x1.size());
      for (size_t k = 0; k < by_x1.size(); ++k) keys[k] = ascending_key(x1_[by_x1[k]]);
      radix_sort_by_key(keys, by_x1);
    } else {
      std::stable_sort(by_x1.begin(), by_x1.end(), [this](int32_t a, int32_t b) { return x1_[a] < x1_[b]; });
    }
    std::vector<int64_t> slot_of(n_, -1);
    slot_begin_.assign(slots + 1, 0);
    for (int64_t r = 0; r < n_; ++r) {
      if (bucket_of[r] < 0) continue;
      const Bucket& bucket = buckets_[bucket_of[r]];
      slot_of[r] = bucket.first_slot + strip_of(bucket, static_cast<double>(y1_[r]));
      ++slot_begin_[slot_of[r] + 1];
    }
    std::partial_sum(slot_begin_.begin(), slot_begin_.end(), slot_begin_.begin());
    const int64_t m = slot_begin_[slots];
    std::vector<int32_t> order(m);
    {
      std::vector<int64_t> fill(slot_begin_.begin(), slot_begin_.end() - 1);
      for (int32_t r : by_x1) order[fill[slot_of[r]]++] = r;
    }
    ex1_.resize(m);
    ey1_.resize(m);
    ex2_.resize(m);
    ey2_.resize(m);
    earea_.resize(m);
    erank_.resize(m);
    suppressed_.assign(m, 0);
    for (int64_t p = 0; p < m; ++p) {
      const int32_t r = order[p];
      ex1_[p] = x1_[r];
      ey1_[p] = y1_[r];
      ex2_[p] = x2_[r];
      ey2_[p] = y2_[r];
      earea_[p] = area_[r];
      erank_[p] = r;
      position_[r] = static_cast<int32_t>(p);
    }
  }

  // Marks every later box (rank > r) whose IoU with box r is above the threshold.
  void suppress_after(int32_t r, T threshold) {
    const T bx1 = x1_[r], by1 = y1_[r], bx2 = x2_[r], by2 = y2_[r], ar = area_[r];
    for (int b = 0; b < kMaxBuckets; ++b) {
      const Bucket& bucket = buckets_[b];
      if (bucket.count == 0) continue;
      // A box j of this bucket can overlap box r only if x1_j > bx1 - w_j >= bx1 - max_w (and the
      // same in y); the margin absorbs the rounding of the stored widths.
      const double margin_x = 1e-6 * (std::fabs(static_cast<double>(bx1)) + bucket.max_w) + 1e-30;
      const double margin_y = 1e-6 * (std::fabs(static_cast<double>(by1)) + bucket.max_h) + 1e-30;
      const double lo_x = static_cast<double>(bx1) - bucket.max_w - margin_x;
      const double lo_y = static_cast<double>(by1) - bucket.max_h - margin_y;
      const int64_t s_lo = strip_of(bucket, lo_y), s_hi = strip_of(bucket, static_cast<double>(by2));
      for (int64_t s = s_lo; s <= s_hi; ++s) {
        const int64_t slot = bucket.first_slot + s;
        const T* begin = ex1_.data() + slot_begin_[slot];
        const T* end = ex1_.data() + slot_begin_[slot + 1];
        const T* first = std::lower_bound(begin, end, lo_x, [](T v, double lo) { return static_cast<double>(v) < lo; });
        const T* last = std::lower_bound(first, end, bx2);  // x1_j >= bx2: no overlap
        const int64_t j0 = first - ex1_.data(), j1 = last - ex1_.data();
        sweep_range(j0, j1, r, bx1, by1, bx2, by2, ar, threshold);
      }
    }
  }

  void sweep_range(int64_t j0, int64_t j1, int32_t r, T bx1, T by1, T bx2, T by2, T ar, T threshold) {
    const T* __restrict__ x1 = ex1_.data();
    const T* __restrict__ y1 = ey1_.data();
    const T* __restrict__ x2 = ex2_.data();
    const T* __restrict__ y2 = ey2_.data();
    const T* __restrict__ area = earea_.data();
    const int32_t* __restrict__ rank = erank_.data();
    int32_t* __restrict__ suppressed = suppressed_.data();
    for (int64_t j = j0; j < j1; ++j) {
      const T inter = common::intersection_area(bx1, by1, bx2, by2, x1[j], y1[j], x2[j], y2[j]);
      const int32_t above = common::iou_above(inter, ar, area[j], threshold) ? 1 : 0;
      const int32_t later = rank[j] > r ? 1 : 0;
      suppressed[j] |= above & later;
    }
  }

  const T *x1_, *y1_, *x2_, *y2_, *area_;
  int64_t n_;
  Bucket buckets_[kMaxBuckets];
  double y_max_[kMaxBuckets] = {};
  std::vector<int64_t> slot_begin_;
  std::vector<T> ex1_, ey1_, ex2_, ey2_, earea_;
  std::vector<int32_t> erank_, suppressed_, position_;
};

// keep[r] for boxes r in [0, n) in score order; `threshold` from common::nms_threshold<T>().
template <typename T>
void greedy_nms(const T* x1, const T* y1, const T* x2, const T* y2, const T* area, int64_t n, T threshold,
                uint8_t* keep) {
  if (n < kSweepMinBoxes) {
    greedy_nms_direct(x1, y1, x2, y2, area, n, threshold, keep);
    return;
  }
  SweepNms<T>(x1, y1, x2, y2, area, n).run(threshold, keep);
}

}  // namespace cpu
}  // namespace ops
}  // namespace fastladder

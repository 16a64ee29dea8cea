// CPU kernel of fastladder::ssd_postprocess: the whole batch in one call, in three parallel phases:
//  1. per prior: softmax over the classes and, where some class passes score_thresh, the decoded,
//     clipped box (common/softmax.h, common/box_coder.h);
//  2. per (image, class): candidates above score_thresh, the top `topk` by score (a selection, not a
//     full sort), greedy NMS among them (nms_sweep.h, common/iou.h);
//  3. per image: the best max_detections kept boxes over all classes, written padded.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/common/box_coder.h"
#include "ops/common/iou.h"
#include "ops/common/softmax.h"
#include "ops/cpu/nms_sweep.h"
#include "ops/ssd_postprocess.h"

namespace fastladder {
namespace ops {

namespace {

template <typename acc_t>
struct Detection {
  acc_t score;
  int32_t prior;
  int32_t label;
};

// Keeps the k smallest of `keys` (any order): a radix select on the top 11 bits (one counting pass
// finds the bucket that holds the k-th key; only that bucket needs a comparison selection), then
// nth_element within it. Several times faster than nth_element over all keys.
inline void keep_smallest(std::vector<uint64_t>& keys, int64_t k) {
  if (static_cast<int64_t>(keys.size()) <= k) return;
  constexpr int kShift = 53;
  std::vector<int64_t> count(2048, 0);
  for (uint64_t key : keys) ++count[key >> kShift];
  int64_t before = 0;
  uint64_t bucket = 0;
  while (before + count[bucket] < k) before += count[bucket++];
  // keys of lower buckets all stay; the boundary bucket's keys go to the tail for the selection
  size_t kept = 0;
  std::vector<uint64_t> boundary;
  boundary.reserve(static_cast<size_t>(count[bucket]));
  for (uint64_t key : keys) {
    const uint64_t b = key >> kShift;
    if (b < bucket) keys[kept++] = key;
    else if (b == bucket) boundary.push_back(key);
  }
  const int64_t need = k - before;
  std::nth_element(boundary.begin(), boundary.begin() + need, boundary.end());
  keys.resize(kept);
  keys.insert(keys.end(), boundary.begin(), boundary.begin() + need);
}

inline float score_of_key(uint64_t key) {
  const uint32_t ascending = ~static_cast<uint32_t>(key >> 32);  // undo descending_key
  const uint32_t bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  float score;
  std::memcpy(&score, &bits, sizeof(score));
  return score;
}

// The first min(k, n) of `candidates` (score, id) by decreasing score, ties by id, sorted; the
// rest is dropped. For float scores the pair is one 64-bit integer key (descending score, id).
template <typename acc_t>
void keep_top(std::vector<std::pair<acc_t, int32_t>>& candidates, int64_t k, std::vector<uint64_t>& keys) {
  if constexpr (std::is_same<acc_t, float>::value) {
    keys.resize(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i)
      keys[i] = (static_cast<uint64_t>(cpu::descending_key(candidates[i].first)) << 32) |
                static_cast<uint32_t>(candidates[i].second);
    keep_smallest(keys, k);
    std::sort(keys.begin(), keys.end());
    candidates.resize(keys.size());
    for (size_t i = 0; i < keys.size(); ++i)
      candidates[i] = {score_of_key(keys[i]), static_cast<int32_t>(keys[i] & 0xffffffffu)};
    return;
  }
  auto before = [](const std::pair<acc_t, int32_t>& a, const std::pair<acc_t, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (static_cast<int64_t>(candidates.size()) > k) {
    std::nth_element(candidates.begin(), candidates.begin() + k, candidates.end(), before);
    candidates.resize(k);
  }
  std::sort(candidates.begin(), candidates.end(), before);
}

template <typename scalar_t>
void ssd_postprocess_kernel(const at::Tensor& loc_t, const at::Tensor& conf_t, const at::Tensor& priors_t,
                            const SsdPostprocessShape& s, double score_thresh_d, double nms_thresh, at::Tensor& boxes_t,
                            at::Tensor& scores_t, at::Tensor& labels_t, at::Tensor& count_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.batch, P = s.priors, C = s.classes, K = s.max_detections;
  // the classes that are reported (all but the background), in increasing order
  std::vector<int32_t> reported;
  for (int32_t c = 0; c < C; ++c)
    if (c != s.background) reported.push_back(c);
  const int64_t R = static_cast<int64_t>(reported.size());
  const scalar_t* loc = loc_t.data_ptr<scalar_t>();
  const scalar_t* conf = conf_t.data_ptr<scalar_t>();
  const scalar_t* priors = priors_t.data_ptr<scalar_t>();
  // compared as torchvision does (`score > score_thresh` on a tensor of the scores' dtype)
  const acc_t score_thresh = static_cast<acc_t>(score_thresh_d);
  const acc_t w_center = static_cast<acc_t>(common::box_coder_weight(s.v_center));
  const acc_t w_size = static_cast<acc_t>(common::box_coder_weight(s.v_size));

  // Phases 1 and 2 run on groups of images whose probabilities fit in ~4 MB, so that phase 2 reads
  // them from the cache (the whole batch's would not fit: 32 x 20 x 8732 floats are 22 MB).
  std::vector<common::Box<acc_t>> decoded(static_cast<size_t>(B * P));
  std::vector<std::vector<Detection<acc_t>>> kept(static_cast<size_t>(B * R));
  const int64_t group = std::max<int64_t>(1, (int64_t(4) << 20) / std::max<int64_t>(1, R * P * sizeof(acc_t)));
  std::vector<acc_t> probability(static_cast<size_t>(std::min(group, B) * R * P));
  const acc_t iou_threshold = common::nms_threshold<acc_t>(nms_thresh);
  // chunks of ~64k exp() calls: a parallel region costs more than a smaller chunk's work when the
  // cores are shared
  const int64_t grain = std::max<int64_t>(256, 65536 / (C + 2));
  for (int64_t first = 0; first < B; first += group) {
    const int64_t last = std::min(B, first + group);

    // Phase 1. probability[b - first][r][p] for the reported classes (class-major: phase 2 scans one
    // class); NaN where the prior's box is not finite, so that it never passes the threshold.
    at::parallel_for(first * P, last * P, grain, [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp) {
        const int64_t b = bp / P, p = bp % P;
        const scalar_t* logits = conf + bp * C;
        const common::SoftmaxRow<acc_t> row = common::softmax_row<acc_t>(logits, C);
        acc_t* prob = probability.data() + (b - first) * R * P + p;
        bool any = false;
        for (int64_t r = 0; r < R; ++r) {
          const acc_t v = common::softmax_probability(static_cast<acc_t>(logits[reported[r]]), row);
          prob[r * P] = v;
          any = any || v > score_thresh;
        }
        if (!any) continue;  // no class needs this box: skip its decoding
        const scalar_t* d = loc + bp * 4;
        const scalar_t* q = priors + p * 4;
        const common::Box<acc_t> box = common::decode_box<acc_t>(
            d[0], d[1], d[2], d[3], q[0], q[1], q[2], q[3], w_center, w_size);
        if (!common::box_is_finite(box.x1, box.y1, box.x2, box.y2)) {
          for (int64_t r = 0; r < R; ++r) prob[r * P] = acc_t(NAN);  // dropped, documented
          continue;
        }
        decoded[bp] = common::clip_box(box, acc_t(0), acc_t(1));
      }
    });

    // Phase 2. Per (image, reported class): threshold, top-k, NMS.
    at::parallel_for(first * R, last * R, 1, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<acc_t, int32_t>> candidates;
      std::vector<uint64_t> keys;
      std::vector<acc_t> x1, y1, x2, y2, area;
      std::vector<uint8_t> keep;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / R, r = task % R;
        const acc_t* prob = probability.data() + ((b - first) * R + r) * P;
        candidates.clear();
        if constexpr (std::is_same<acc_t, float>::value) {
          // straight to (score, prior) keys: the candidate list is selected before it is stored
          keys.clear();
          for (int64_t p = 0; p < P; ++p)
            if (prob[p] > score_thresh)
              keys.push_back((static_cast<uint64_t>(cpu::descending_key(prob[p])) << 32) | static_cast<uint64_t>(p));
          keep_smallest(keys, s.topk);
          std::sort(keys.begin(), keys.end());
          for (uint64_t key : keys) candidates.emplace_back(score_of_key(key), static_cast<int32_t>(key & 0xffffffffu));
        } else {
          for (int64_t p = 0; p < P; ++p)
            if (prob[p] > score_thresh) candidates.emplace_back(prob[p], static_cast<int32_t>(p));
          keep_top(candidates, s.topk, keys);
        }
        const int64_t n = static_cast<int64_t>(candidates.size());
        x1.resize(n);
        y1.resize(n);
        x2.resize(n);
        y2.resize(n);
        area.resize(n);
        keep.resize(n);
        for (int64_t k = 0; k < n; ++k) {
          const common::Box<acc_t>& box = decoded[b * P + candidates[k].second];
          x1[k] = box.x1;
          y1[k] = box.y1;
          x2[k] = box.x2;
          y2[k] = box.y2;
          area[k] = common::box_area(box.x1, box.y1, box.x2, box.y2);
        }
        cpu::greedy_nms(x1.data(), y1.data(), x2.data(), y2.data(), area.data(), n, iou_threshold, keep.data());
        auto& out = kept[task];
        out.clear();
        for (int64_t k = 0; k < n; ++k)
          if (keep[k]) out.push_back(Detection<acc_t>{candidates[k].first, candidates[k].second, reported[r]});
      }
    });
  }  // groups of images

  // Phase 3. Per image: the best K over all classes, by decreasing score; ties keep the order of
  // (class, rank in class) in which torchvision concatenates the classes.
  scalar_t* boxes = boxes_t.data_ptr<scalar_t>();
  scalar_t* scores = scores_t.data_ptr<scalar_t>();
  int64_t* labels = labels_t.data_ptr<int64_t>();
  int64_t* count = count_t.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<acc_t, int32_t>> order;  // (score, position in `all`)
    std::vector<uint64_t> keys;
    std::vector<Detection<acc_t>> all;
    for (int64_t b = begin; b < end; ++b) {
      all.clear();
      for (int64_t r = 0; r < R; ++r) all.insert(all.end(), kept[b * R + r].begin(), kept[b * R + r].end());
      order.resize(all.size());
      for (size_t i = 0; i < all.size(); ++i) order[i] = {all[i].score, static_cast<int32_t>(i)};
      keep_top(order, K, keys);
      const int64_t n = static_cast<int64_t>(order.size());
      for (int64_t k = 0; k < K; ++k) {
        scalar_t* o = boxes + (b * K + k) * 4;
        if (k < n) {
          const Detection<acc_t>& d = all[order[k].second];
          const common::Box<acc_t>& box = decoded[b * P + d.prior];
          o[0] = static_cast<scalar_t>(box.x1);
          o[1] = static_cast<scalar_t>(box.y1);
          o[2] = static_cast<scalar_t>(box.x2);
          o[3] = static_cast<scalar_t>(box.y2);
          scores[b * K + k] = static_cast<scalar_t>(d.score);
          labels[b * K + k] = d.label;
        } else {
          o[0] = o[1] = o[2] = o[3] = scalar_t(0);
          scores[b * K + k] = scalar_t(0);
          labels[b * K + k] = -1;
        }
      }
      count[b] = n;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssd_postprocess_cpu(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& priors_in, double score_thresh,
    double nms_thresh, int64_t topk, int64_t max_detections, at::ArrayRef<double> variances, int64_t background) {
  const SsdPostprocessShape s = check_ssd_postprocess(loc_in, conf_in, priors_in, score_thresh, nms_thresh, topk,
                                                      max_detections, variances, background);
  TORCH_CHECK_VALUE(s.priors < std::numeric_limits<int32_t>::max(), "ssd_postprocess supports fewer than 2^31 priors");
  const auto options = loc_in.options();
  at::Tensor boxes = at::zeros({s.batch, s.max_detections, 4}, options);
  at::Tensor scores = at::zeros({s.batch, s.max_detections}, options);
  at::Tensor labels = at::full({s.batch, s.max_detections}, -1, options.dtype(at::kLong));
  at::Tensor count = at::zeros({s.batch}, options.dtype(at::kLong));
  if (s.batch == 0 || s.priors == 0) return {boxes, scores, labels, count};
  const at::Tensor loc = loc_in.contiguous(), conf = conf_in.contiguous(), priors = priors_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loc.scalar_type(), "ssd_postprocess_cpu", [&] {
    ssd_postprocess_kernel<scalar_t>(loc, conf, priors, s, score_thresh, nms_thresh, boxes, scores, labels, count);
  });
  return {boxes, scores, labels, count};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CPU, m) { m.impl("ssd_postprocess", &ssd_postprocess_cpu); }

}  // namespace ops
}  // namespace fastladder

// CUDA kernel of fastladder::ssd_postprocess: the whole batch with no host synchronization (every
// size is fixed by topk and max_detections):
//  1. one thread per (image, prior): softmax (common/softmax.h), decoded and clipped box
//     (common/box_coder.h); probabilities of non-candidates (not above score_thresh, or a
//     non-finite box) become -1;
//  2. a stable descending sort per (image, class): the `topk` best candidates, ties by prior index
//     (the CPU kernel's order; at::topk leaves the order of equal scores unspecified);
//  3. per (image, class) the 64-box bitmask and the greedy pass on the device (nms_mask.cuh);
//  4. a stable descending sort per image over the kept scores of all classes (ties by class, then
//     rank in the class, as on the CPU), then the padded outputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/box_coder.h"
#include "ops/common/iou.h"
#include "ops/common/softmax.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/nms_mask.cuh"
#include "ops/ssd_postprocess.h"

namespace fastladder {
namespace ops {

namespace {

using cuda::kNmsBlock;

template <typename scalar_t, typename acc_t>
__global__ void score_decode_kernel(const scalar_t* __restrict__ loc, const scalar_t* __restrict__ conf,
                                    const scalar_t* __restrict__ priors, int64_t batch, int64_t num_priors,
                                    int64_t classes, int64_t background, acc_t score_thresh, acc_t w_center,
                                    acc_t w_size, acc_t* __restrict__ probability, acc_t* __restrict__ decoded) {
  const int64_t reported = classes - (background >= 0 ? 1 : 0);
  for (int64_t bp = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; bp < batch * num_priors;
       bp += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = bp / num_priors, p = bp % num_priors;
    const scalar_t* d = loc + bp * 4;
    const scalar_t* q = priors + p * 4;
    const common::Box<acc_t> raw = common::decode_box<acc_t>(d[0], d[1], d[2], d[3], q[0], q[1], q[2], q[3],
                                                             w_center, w_size);
    const bool finite = common::box_is_finite(raw.x1, raw.y1, raw.x2, raw.y2);
    const common::Box<acc_t> box = common::clip_box(raw, acc_t(0), acc_t(1));
    acc_t* o = decoded + bp * 4;
    o[0] = box.x1;
    o[1] = box.y1;
    o[2] = box.x2;
    o[3] = box.y2;
    const scalar_t* logits = conf + bp * classes;
    const common::SoftmaxRow<acc_t> row = common::softmax_row<acc_t>(logits, classes);
    int64_t r = 0;
    for (int64_t c = 0; c < classes; ++c) {
      if (c == background) continue;
      const acc_t v = common::softmax_probability(static_cast<acc_t>(logits[c]), row);
      // class-major [B, R, P]: topk runs along the priors
      probability[(b * reported + r) * num_priors + p] = (finite && v > score_thresh) ? v : acc_t(-1);
      ++r;
    }
  }
}

// grid (tile column, tile row, task): the tiles of `tasks` (image, class) problems of `count`
// candidates each; block z runs tasks z, z + gridDim.z, ... (launch::tile_grid caps gridDim.z).
template <typename acc_t>
__global__ void candidate_mask_kernel(const acc_t* __restrict__ decoded, const int64_t* __restrict__ candidates,
                                      int64_t count, int64_t tasks, int64_t reported, int64_t num_priors,
                                      acc_t threshold, uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;  // the same for the whole block
  const int64_t words = cuda::nms_blocks(count);
  const int64_t col_start = col_block * kNmsBlock, row_start = row_block * kNmsBlock;
  const int cols = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), count - col_start));
  const int rows = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), count - row_start));
  __shared__ acc_t tile[kNmsBlock * 4];
  __shared__ acc_t tile_area[kNmsBlock];
  for (int64_t task = blockIdx.z; task < tasks; task += gridDim.z) {
    const int64_t b = task / reported;
    __syncthreads();  // the previous task's tile is no longer read
    // the candidates' boxes are read through their prior indices: nothing is gathered beforehand
    if (threadIdx.x < cols) {
      const acc_t* src = decoded + (b * num_priors + candidates[task * count + col_start + threadIdx.x]) * 4;
      for (int k = 0; k < 4; ++k) tile[threadIdx.x * 4 + k] = src[k];
      tile_area[threadIdx.x] = common::box_area(src[0], src[1], src[2], src[3]);
    }
    __syncthreads();
    if (threadIdx.x < rows) {
      const int64_t i = row_start + threadIdx.x;
      const acc_t* a = decoded + (b * num_priors + candidates[task * count + i]) * 4;
      const acc_t ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
      const acc_t area = common::box_area(ax1, ay1, ax2, ay2);
      uint64_t bits = 0;
      const int first = row_block == col_block ? static_cast<int>(threadIdx.x) + 1 : 0;
      for (int k = first; k < cols; ++k) {
        const acc_t* t = tile + k * 4;
        const acc_t inter = common::intersection_area(ax1, ay1, ax2, ay2, t[0], t[1], t[2], t[3]);
        if (common::iou_above(inter, area, tile_area[k], threshold)) bits |= 1ULL << k;
      }
      mask[(task * count + i) * words + col_block] = bits;
    }
  }
}

// One block per task: the greedy pass; kept candidates keep their score, the others get -1.
template <typename acc_t>
__global__ void candidate_reduce_kernel(const uint64_t* __restrict__ mask, const acc_t* __restrict__ values,
                                        int64_t count, acc_t score_thresh, uint64_t* __restrict__ scratch,
                                        acc_t* __restrict__ kept_scores) {
  __shared__ uint64_t shared_kept;
  const int64_t task = blockIdx.x;
  const int64_t words = cuda::nms_blocks(count);
  uint64_t* removed = scratch + task * 2 * words;
  uint64_t* keep_words = removed + words;
  const acc_t* v = values + task * count;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
    uint64_t word = 0;
    for (int bit = 0; bit < kNmsBlock; ++bit) {
      const int64_t i = w * kNmsBlock + bit;
      if (i < count && !(v[i] > score_thresh)) word |= 1ULL << bit;  // padding of topk: not a candidate
    }
    removed[w] = word;
  }
  __syncthreads();
  cuda::nms_reduce(mask + task * count * words, count, words, removed, keep_words, &shared_kept);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const bool kept = (keep_words[i / kNmsBlock] >> (i % kNmsBlock)) & 1;
    kept_scores[task * count + i] = kept ? v[i] : acc_t(-1);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void write_kernel(const acc_t* __restrict__ top_values, const int64_t* __restrict__ top_positions,
                             const int64_t* __restrict__ candidates, const acc_t* __restrict__ decoded,
                             int64_t batch, int64_t selected, int64_t count, int64_t reported, int64_t num_priors,
                             int64_t max_detections, int64_t background, acc_t score_thresh,
                             scalar_t* __restrict__ boxes, scalar_t* __restrict__ scores, int64_t* __restrict__ labels) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < batch * selected;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = index / selected, k = index % selected;
    const acc_t value = top_values[index];
    if (!(value > score_thresh)) continue;  // padding stays as initialised
    const int64_t position = top_positions[index];
    const int64_t r = position / count;
    const int64_t prior = candidates[(b * reported + r) * count + position % count];
    const acc_t* src = decoded + (b * num_priors + prior) * 4;
    scalar_t* o = boxes + (b * max_detections + k) * 4;
    for (int c = 0; c < 4; ++c) o[c] = static_cast<scalar_t>(src[c]);
    scores[b * max_detections + k] = static_cast<scalar_t>(value);
    labels[b * max_detections + k] = (background >= 0 && r >= background) ? r + 1 : r;
  }
}

// The first k columns of each row of `scores` [rows, n] by decreasing score, ties by column (a
// stable sort: deterministic, and the CPU kernel's tie order): (values, columns), contiguous.
std::tuple<at::Tensor, at::Tensor> first_by_score(const at::Tensor& scores, int64_t k) {
  auto sorted = at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  return {std::get<0>(sorted).narrow(1, 0, k).contiguous(), std::get<1>(sorted).narrow(1, 0, k).contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssd_postprocess_cuda(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& priors_in, double score_thresh,
    double nms_thresh, int64_t topk, int64_t max_detections, at::ArrayRef<double> variances, int64_t background) {
  const SsdPostprocessShape s = check_ssd_postprocess(loc_in, conf_in, priors_in, score_thresh, nms_thresh, topk,
                                                      max_detections, variances, background);
  const c10::cuda::CUDAGuard guard(loc_in.device());
  const auto options = loc_in.options();
  at::Tensor boxes = at::zeros({s.batch, s.max_detections, 4}, options);
  at::Tensor scores = at::zeros({s.batch, s.max_detections}, options);
  at::Tensor labels = at::full({s.batch, s.max_detections}, -1, options.dtype(at::kLong));
  at::Tensor count_out = at::zeros({s.batch}, options.dtype(at::kLong));
  const int64_t reported = s.classes - (s.background >= 0 ? 1 : 0);
  if (s.batch == 0 || s.priors == 0 || reported == 0) return {boxes, scores, labels, count_out};
  const at::Tensor loc = loc_in.contiguous(), conf = conf_in.contiguous(), priors = priors_in.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = s.batch, P = s.priors, R = reported;
  const int64_t count = std::min(s.topk, P);  // candidates per (image, class), padded with -1
  const int64_t words = cuda::nms_blocks(count);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loc.scalar_type(), "ssd_postprocess_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = options.dtype(c10::CppTypeToScalarType<acc_t>::value);
    const acc_t thresh = static_cast<acc_t>(score_thresh);
    at::Tensor probability = at::empty({B, R, P}, acc_options);
    at::Tensor decoded = at::empty({B, P, 4}, acc_options);
    score_decode_kernel<scalar_t, acc_t><<<cuda::blocks_for(B * P), cuda::kThreads, 0, stream>>>(
        loc.data_ptr<scalar_t>(), conf.data_ptr<scalar_t>(), priors.data_ptr<scalar_t>(), B, P, s.classes,
        s.background, thresh, static_cast<acc_t>(common::box_coder_weight(s.v_center)),
        static_cast<acc_t>(common::box_coder_weight(s.v_size)), probability.data_ptr<acc_t>(),
        decoded.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // 2. per (image, class) the best `count` candidates, by decreasing probability, ties by prior
    const auto top = first_by_score(probability.view({B * R, P}), count);
    const at::Tensor values = std::get<0>(top);
    const at::Tensor candidates = std::get<1>(top);
    // 3. NMS per (image, class)
    at::Tensor mask = at::empty({B * R * count * words}, options.dtype(at::kLong));
    candidate_mask_kernel<acc_t>
        <<<cuda::grid_of(launch::tile_grid(words, B * R), "ssd_postprocess"), kNmsBlock, 0, stream>>>(
        decoded.data_ptr<acc_t>(), candidates.data_ptr<int64_t>(), count, B * R, R, P,
        common::nms_threshold<acc_t>(nms_thresh), reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor scratch = at::empty({B * R * 2 * words}, options.dtype(at::kLong));
    at::Tensor kept_scores = at::empty({B, R * count}, acc_options);
    candidate_reduce_kernel<acc_t><<<cuda::grid_of(launch::per_item_grid(B * R), "ssd_postprocess"), 128, 0, stream>>>(
        reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), values.data_ptr<acc_t>(), count, thresh,
        reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()), kept_scores.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // 4. the best max_detections per image over all classes
    const int64_t selected = std::min(s.max_detections, R * count);
    const auto best = first_by_score(kept_scores, selected);
    const at::Tensor best_values = std::get<0>(best);
    const at::Tensor best_positions = std::get<1>(best);
    write_kernel<scalar_t, acc_t><<<cuda::blocks_for(B * selected), cuda::kThreads, 0, stream>>>(
        best_values.data_ptr<acc_t>(), best_positions.data_ptr<int64_t>(), candidates.data_ptr<int64_t>(),
        decoded.data_ptr<acc_t>(), B, selected, count, R, P, s.max_detections, s.background, thresh,
        boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), labels.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    count_out.copy_((best_values > thresh).sum(1));  // on the device: no synchronization
  });
  return {boxes, scores, labels, count_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) { m.impl("ssd_postprocess", &ssd_postprocess_cuda); }

}  // namespace ops
}  // namespace fastladder

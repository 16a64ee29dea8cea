// CUDA kernels of fastladder::nms and fastladder::batched_nms: sort on the device, the 64-box
// bitmask (nms_mask.cuh, with common/iou.h's test) and the greedy pass on the device. Only the final
// selection of the kept indices (a data-dependent size) waits for the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/nms_mask.cuh"
#include "ops/nms.h"

namespace fastladder {
namespace ops {

namespace {

using cuda::kNmsBlock;

template <typename T>
__global__ void mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ categories, int64_t n,
                            T threshold, uint64_t* __restrict__ mask, int64_t words) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;  // below the diagonal: never read
  if (categories != nullptr) {
    // category-major order: a column block that starts after the row block's last category holds
    // nothing it can suppress (the words are still written, as zeros)
    const int64_t row_last = min(n, (row_block + 1) * kNmsBlock) - 1;
    if (categories[col_block * kNmsBlock] > categories[row_last]) {
      const int64_t i = row_block * kNmsBlock + threadIdx.x;
      if (i < n) mask[i * words + col_block] = 0;
      return;
    }
  }
  cuda::nms_mask_tile(boxes, categories, n, threshold, mask, words, row_block, col_block);
}

// One block: marks the non-finite boxes (at the end of the order) removed, then the greedy pass,
// then one flag per sorted box.
__global__ void reduce_kernel(const uint64_t* __restrict__ mask, const bool* __restrict__ valid, int64_t n,
                              int64_t words, uint64_t* __restrict__ removed, uint64_t* __restrict__ keep_words,
                              bool* __restrict__ keep) {
  __shared__ uint64_t shared_kept;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
    uint64_t word = 0;
    for (int bit = 0; bit < kNmsBlock; ++bit) {
      const int64_t i = w * kNmsBlock + bit;
      if (i < n && !valid[i]) word |= 1ULL << bit;
    }
    removed[w] = word;
  }
  __syncthreads();
  cuda::nms_reduce(mask, n, words, removed, keep_words, &shared_kept);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) keep[i] = (keep_words[i / kNmsBlock] >> (i % kNmsBlock)) & 1;
}

// Kept indices (int64), by decreasing score, ties by index. `categories` undefined for plain nms.
at::Tensor nms_impl(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& categories_in,
                    double iou_threshold) {
  const int64_t n = boxes_in.size(0);
  const at::Tensor boxes_all = boxes_in.contiguous();
  const at::Tensor scores = scores_in.contiguous();
  const at::ScalarType acc = boxes_all.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // non-finite boxes or scores: sorted last (score -inf) and never kept
  const at::Tensor valid = at::isfinite(scores) & at::isfinite(boxes_all).all(1);
  const at::Tensor key = at::where(valid, scores.to(acc), at::full({}, -INFINITY, scores.options().dtype(acc)));
  at::Tensor order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor categories;
  if (categories_in.defined()) {
    // category-major, score order within a category (the second sort is stable)
    const at::Tensor by_score = categories_in.to(at::kLong).index_select(0, order);
    const at::Tensor regroup = std::get<1>(at::sort(by_score, /*stable=*/true, /*dim=*/0, /*descending=*/false));
    order = order.index_select(0, regroup);
    categories = by_score.index_select(0, regroup).contiguous();
  }
  const at::Tensor sorted_boxes = boxes_all.index_select(0, order).to(acc).contiguous();
  const at::Tensor sorted_valid = valid.index_select(0, order).contiguous();
  const int64_t words = cuda::nms_blocks(n);
  const auto i64 = boxes_all.options().dtype(at::kLong);
  at::Tensor mask = at::empty({n * words}, i64);
  at::Tensor removed = at::empty({words}, i64);
  at::Tensor keep_words = at::empty({words}, i64);
  at::Tensor keep = at::empty({n}, boxes_all.options().dtype(at::kBool));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "nms_cuda", [&] {
    // (over 4.19 million boxes the tile grid exceeds gridDim.y: a clear error instead of a failed launch)
    mask_kernel<scalar_t><<<cuda::grid_of(launch::tile_grid(words, 1), "nms"), kNmsBlock, 0, stream>>>(
        sorted_boxes.data_ptr<scalar_t>(), categories.defined() ? categories.data_ptr<int64_t>() : nullptr, n,
        common::nms_threshold<scalar_t>(iou_threshold), reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()),
        words);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  reduce_kernel<<<1, 1024, 0, stream>>>(reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()),
                                        sorted_valid.data_ptr<bool>(), n, words,
                                        reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()),
                                        reinterpret_cast<uint64_t*>(keep_words.data_ptr<int64_t>()),
                                        keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor kept = order.masked_select(keep);  // the one synchronization: the result's size
  if (!categories_in.defined()) return kept;
  // back to score order across categories, ties by index
  kept = std::get<0>(at::sort(kept));
  const at::Tensor kept_scores = scores.index_select(0, kept).to(acc);
  return kept.index_select(0, std::get<1>(at::sort(kept_scores, /*stable=*/true, /*dim=*/0, /*descending=*/true)));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms(boxes, scores, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  return nms_impl(boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_batched_nms(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  return nms_impl(boxes, scores, idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace ops
}  // namespace fastladder

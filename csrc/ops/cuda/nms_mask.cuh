// The suppression bitmask of CUDA NMS (nms, batched_nms, ssd_postprocess), torchvision's scheme:
// boxes in score order are cut into blocks of 64; for row block r and column block c >= r, thread t
// of a 64-thread block sets bit k of word mask[r * 64 + t][c] when box c * 64 + k comes later and
// its IoU with box r * 64 + t is above the threshold (common/iou.h, the CPU kernels' test). The
// greedy pass over the mask (nms_reduce) runs on the device: the mask never goes to the host.
#pragma once

#include <cstdint>

#include "ops/common/iou.h"

namespace fastladder {
namespace cuda {

constexpr int kNmsBlock = 64;

__host__ __device__ inline int64_t nms_blocks(int64_t n) { return (n + kNmsBlock - 1) / kNmsBlock; }

// One 64 x 64 tile of the mask. `boxes` [n, 4] and `categories` [n] (nullable) are in score order;
// boxes of different categories never suppress each other. Every word of the tile row is written
// (0 where nothing is suppressed), so the mask needs no clearing.
template <typename T>
__device__ void nms_mask_tile(const T* __restrict__ boxes, const int64_t* __restrict__ categories, int64_t n,
                              T threshold, uint64_t* __restrict__ mask, int64_t words, int64_t row_block,
                              int64_t col_block) {
  __shared__ T tile[kNmsBlock * 4];
  __shared__ T tile_area[kNmsBlock];
  const int64_t col_start = col_block * kNmsBlock;
  const int cols = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), n - col_start));
  const int64_t row_start = row_block * kNmsBlock;
  const int rows = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), n - row_start));
  if (threadIdx.x < cols) {
    const T* b = boxes + (col_start + threadIdx.x) * 4;
    tile[threadIdx.x * 4 + 0] = b[0];
    tile[threadIdx.x * 4 + 1] = b[1];
    tile[threadIdx.x * 4 + 2] = b[2];
    tile[threadIdx.x * 4 + 3] = b[3];
    tile_area[threadIdx.x] = common::box_area(b[0], b[1], b[2], b[3]);
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int64_t i = row_start + threadIdx.x;
  const T* a = boxes + i * 4;
  const T ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const T area = common::box_area(ax1, ay1, ax2, ay2);
  const int64_t category = categories != nullptr ? categories[i] : 0;
  uint64_t bits = 0;
  const int first = row_block == col_block ? static_cast<int>(threadIdx.x) + 1 : 0;
  for (int k = first; k < cols; ++k) {
    if (categories != nullptr && categories[col_start + k] != category) continue;
    const T* b = tile + k * 4;
    const T inter = common::intersection_area(ax1, ay1, ax2, ay2, b[0], b[1], b[2], b[3]);
    if (common::iou_above(inter, area, tile_area[k], threshold)) bits |= 1ULL << k;
  }
  mask[i * words + col_block] = bits;
}

// The greedy pass for one problem, by one thread block: `removed` (words entries, in memory the
// block may write) starts with the boxes that must never be kept; on return keep_words holds the
// kept boxes' bits. Sequential over 64-box blocks; within a block one thread resolves the 64
// boxes with the diagonal words, then all threads fold the kept rows into the later words.
__device__ inline void nms_reduce(const uint64_t* __restrict__ mask, int64_t n, int64_t words, uint64_t* removed,
                                  uint64_t* __restrict__ keep_words, uint64_t* shared_kept) {
  for (int64_t block = 0; block < words; ++block) {
    if (threadIdx.x == 0) {
      uint64_t word = removed[block];
      uint64_t kept = 0;
      const int count = static_cast<int>(min(static_cast<int64_t>(kNmsBlock), n - block * kNmsBlock));
      for (int bit = 0; bit < count; ++bit) {
        if (word & (1ULL << bit)) continue;
        kept |= 1ULL << bit;
        word |= mask[(block * kNmsBlock + bit) * words + block];
      }
      removed[block] = word;
      keep_words[block] = kept;
      *shared_kept = kept;
    }
    __syncthreads();
    const uint64_t kept = *shared_kept;
    for (int64_t w = block + 1 + threadIdx.x; w < words; w += blockDim.x) {
      uint64_t acc = removed[w];
      for (uint64_t rest = kept; rest != 0; rest &= rest - 1) {
        const int bit = __ffsll(static_cast<long long>(rest)) - 1;
        acc |= mask[(block * kNmsBlock + bit) * words + w];
      }
      removed[w] = acc;
    }
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace fastladder

// Launch shapes of the CUDA kernels, as plain arithmetic (no CUDA headers): the kernels' files
// call these, and tests/cpp checks them on the CPU.
//
// CUDA's grid limits (every compute capability since 3.0): gridDim.x <= 2^31 - 1, gridDim.y and
// gridDim.z <= 65535. A launch beyond them fails ("invalid configuration argument"); so every
// shape here either stays inside them by construction (grid-stride loops) or is checked (fits()).
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastladder {
namespace launch {

constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;
// Threads per block of the elementwise kernels.
constexpr int kThreads = 256;
// Grid-stride kernels: more blocks than this only queue up (it is ~15k blocks per SM of an H100).
constexpr int64_t kMaxStrideBlocks = 65535LL * 32;

struct Shape {
  int64_t x = 1, y = 1, z = 1;
};

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool fits(const Shape& s) {
  return s.x >= 1 && s.y >= 1 && s.z >= 1 && s.x <= kMaxGridX && s.y <= kMaxGridYZ && s.z <= kMaxGridYZ;
}

// Blocks of a grid-stride loop over n items: enough to cover n (capped), at least one.
inline int64_t stride_blocks(int64_t n, int threads = kThreads) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), kMaxStrideBlocks));
}

// The 64 x 64 tile grid of NMS masks for `tasks` independent problems of `words` tiles per side:
// (column tile, row tile, task). Tasks beyond gridDim.z are looped over by the kernel: block z runs
// tasks z, z + gridDim.z, ... (task_stride). words > kMaxGridYZ (over 4.19 million boxes in one
// problem) does not fit: check with fits().
inline Shape tile_grid(int64_t words, int64_t tasks) {
  Shape s;
  s.x = std::max<int64_t>(1, words);
  s.y = std::max<int64_t>(1, words);
  s.z = std::max<int64_t>(1, std::min<int64_t>(tasks, kMaxGridYZ));
  return s;
}

// One block per item along x (per channel, per task): fits while items <= kMaxGridX.
inline Shape per_item_grid(int64_t items) {
  Shape s;
  s.x = std::max<int64_t>(1, items);
  return s;
}

// Deterministic two-pass reductions over `items` (pixels) for `lanes` columns (channels): the grid
// of pass 1 is (ceil(lanes / lane_block), parts); part p sums items p, p + parts, ... in order,
// and pass 2 adds the parts in order. parts depends only on the sizes: the same on every run.
constexpr int64_t kMinItemsPerPart = 2048;
constexpr int64_t kMaxParts = 128;

inline int64_t reduction_parts(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxParts, items / kMinItemsPerPart));
}

inline Shape reduction_grid(int64_t lanes, int64_t lane_block, int64_t items) {
  Shape s;
  s.x = std::max<int64_t>(1, ceil_div(lanes, lane_block));
  s.y = reduction_parts(items);
  return s;
}

}  // namespace launch
}  // namespace fastladder

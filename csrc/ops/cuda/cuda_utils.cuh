// Launch helpers shared by the CUDA kernel files (indexing and launch only; math lives in common/,
// launch shapes in common/launch.h).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "ops/common/launch.h"

namespace fastladder {
namespace cuda {

constexpr int kThreads = launch::kThreads;

// Blocks of a grid-stride kernel over n items (within the grid limits by construction).
inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>(launch::stride_blocks(n)); }

// The grid of `shape`, or an error naming the kernel and the sizes when it exceeds CUDA's limits.
inline dim3 grid_of(const launch::Shape& shape, const char* kernel) {
  TORCH_CHECK(launch::fits(shape), "fastladder: ", kernel, " needs a grid of (", shape.x, ", ", shape.y, ", ",
              shape.z, ") blocks, beyond CUDA's limits (", launch::kMaxGridX, ", ", launch::kMaxGridYZ, ", ",
              launch::kMaxGridYZ, "); split the input into smaller calls");
  return dim3(static_cast<unsigned int>(shape.x), static_cast<unsigned int>(shape.y),
              static_cast<unsigned int>(shape.z));
}

// Deterministic block sum: a fixed tree over shared memory, the same order on every run.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace fastladder

// Launch helpers shared by the CUDA kernel files (indexing and launch only; math lives in common/).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace fastladder {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 32)));
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

// Portability macros for the math headers in csrc/ops/common/: every function here compiles as
// plain C++ (CPU kernels, tests/cpp) and as CUDA device code, and uses no ATen.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FL_HOST_DEVICE __host__ __device__
#else
#define FL_HOST_DEVICE
#endif

#define FL_INLINE FL_HOST_DEVICE inline

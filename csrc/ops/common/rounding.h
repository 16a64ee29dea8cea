// Products rounded on their own, on the CPU and on CUDA alike.
//
// The CPU kernels are compiled with -ffp-contract=off: `a * b + c` rounds the product, then the sum.
// nvcc contracts the same expression into one FMA (a single rounding), so the CUDA kernels would
// round differently. mul_rn is __fmul_rn / __dmul_rn in device code, which nvcc never fuses into a
// following add; so every expression written with it rounds identically on both backends.
#pragma once

#include "ops/common/macros.h"

namespace fastladder {
namespace common {

FL_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FL_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace common
}  // namespace fastladder

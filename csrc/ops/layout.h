// The memory-layout rule of fastladder's operators, shared by every backend and mirrored by the
// fake kernels (fastladder/ops/_layout.py) so that compiled and traced code see the same strides.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

// channels_last when t is a dense channels_last tensor that is not also NCHW-contiguous (a tensor
// that is both, e.g. C == 1 or H == W == 1, counts as NCHW).
inline bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

inline at::MemoryFormat output_format(const at::Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace ops
}  // namespace fastladder

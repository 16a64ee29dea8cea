// bn_relu: y = max(x * scale[c] + shift[c], 0), inference BatchNorm folded to a per-channel affine.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ops/layout.h"

namespace fastladder {
namespace ops {

// Checks x (4-D [N, C, H, W], floating), scale and shift ([C], x's dtype and device).
void check_bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift);

// Checks the optional bias of a convolution a CPU kernel runs itself (bn_relu_conv1x1, conv3x3_winograd):
// [out_channels], floating point, on x's device.
void check_conv_bias(const c10::optional<at::Tensor>& bias, int64_t out_channels, const at::Tensor& x);

// Checks bn_relu_conv1x1's arguments: bn_relu's, weight [C_out, C, 1, 1] in x's dtype and device, bias
// [C_out] floating on x's device.
void check_bn_relu_conv1x1(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// bn_relu of one pixel's C adjacent bfloat16 channels (raw bits), bit for bit the op's result: the
// CPU kernels' prologue of bn_relu_conv1x1.
void affine_relu_pixel_bf16_bits(const uint16_t* x, const float* scale, const float* shift, uint16_t* y,
                                 int64_t channels);

// Whether every (n, c) plane of x is one contiguous H*W run (NCHW, or a channel slice of it such
// as a DenseNet buffer prefix): the kernels then read x in place, without a copy.
inline bool planes_contiguous(const at::Tensor& x) {
  return x.stride(3) == 1 && (x.size(2) == 1 || x.stride(2) == x.size(3));
}

// Whether x is a channel slice of a larger channels_last buffer (a DenseNet buffer prefix in NHWC,
// or a band of its rows): the channels of a pixel are adjacent, and an image's pixels are
// stride(3) > C elements apart in row-major order (images stride(0) apart). Dense channels_last
// tensors are not slices.
inline bool is_channels_last_slice(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) < 2 || x.size(2) * x.size(3) < 2 || is_channels_last(x)) return false;
  const int64_t pixel = x.stride(3);
  return x.stride(1) == 1 && pixel > x.size(1) && (x.size(2) == 1 || x.stride(2) == x.size(3) * pixel);
}

// bn_relu's result layout: channels_last for channels_last x and for channels_last slices (read in
// place), NCHW otherwise (fastladder/ops/bn_relu.py's fake kernels mirror this).
inline at::MemoryFormat bn_relu_output_format(const at::Tensor& x) {
  return is_channels_last(x) || is_channels_last_slice(x) ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous;
}

}  // namespace ops
}  // namespace fastladder

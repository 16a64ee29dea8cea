// upsample_concat: bilinear upsample of `low` to skip's size, joined with `skip` (channel concat or
// sum), then an optional per-channel affine and ReLU. Declarations shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

#include "ops/layout.h"

namespace fastladder {
namespace ops {

enum class JoinMode { kConcat, kAdd };

// Validated arguments: the shapes every backend needs.
struct UpsampleConcatShape {
  JoinMode mode;
  int64_t batch, low_channels, low_height, low_width;
  int64_t skip_channels, height, width;
  int64_t out_channels;
  bool has_affine;
};

// Checks every argument (rank, batch, channels, dtype, device, scale/shift length) and raises an
// error that names the argument and the shapes seen. Returns the shapes.
UpsampleConcatShape check_upsample_concat(const at::Tensor& low, const at::Tensor& skip, const std::string& mode,
                                          const c10::optional<at::Tensor>& scale,
                                          const c10::optional<at::Tensor>& shift);

// The row window of upsample_concat_rows: rows [row_begin, row_begin + row_count) of the full
// output, at most one row beyond either border (the convolution's zero padding).
void check_row_window(const UpsampleConcatShape& shape, int64_t row_begin, int64_t row_count);

// The out= tensor of upsample_concat_rows: exactly [N, C_out, row_count, W] in the requested layout,
// with skip's dtype and device (a band buffer reused across calls; never resized).
void check_rows_out(const at::Tensor& out, const UpsampleConcatShape& shape, int64_t row_count, bool channels_last,
                    const at::Tensor& skip);

// All checks of upsample_concat_rows(.out): the op's arguments and the row window.
UpsampleConcatShape check_upsample_concat_rows(const at::Tensor& low, const at::Tensor& skip, const std::string& mode,
                                               const c10::optional<at::Tensor>& scale,
                                               const c10::optional<at::Tensor>& shift, int64_t row_begin,
                                               int64_t row_count);

// What every backend's backward starts from: the checked shapes, the inputs and grad_out in the
// output's layout, and the gradients allocated (grad_scale/grad_shift [C] when need_affine_grad,
// else [0], zero-filled; grad_low/grad_skip zero-filled when grad_out is empty, uninitialized otherwise).
struct UpsampleConcatBackward {
  UpsampleConcatShape shape;
  at::MemoryFormat format;
  at::Tensor low, skip, grad_out;
  at::Tensor grad_low, grad_skip, grad_scale, grad_shift;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gradients() const {
    return {grad_low, grad_skip, grad_scale, grad_shift};
  }
};

UpsampleConcatBackward prepare_upsample_concat_backward(const at::Tensor& grad_out, const at::Tensor& low,
                                                        const at::Tensor& skip, const std::string& mode,
                                                        const c10::optional<at::Tensor>& scale,
                                                        const c10::optional<at::Tensor>& shift, bool need_affine_grad);

}  // namespace ops
}  // namespace fastladder

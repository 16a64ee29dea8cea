// Schema and argument checks of fastladder::upsample_concat (kernels: cpu/ and cuda/).
#include "ops/upsample_concat.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace fastladder {
namespace ops {

namespace {

void check_per_channel(const c10::optional<at::Tensor>& param, const char* name, int64_t channels,
                       const at::Tensor& like) {
  if (!param.has_value() || !param->defined()) return;
  TORCH_CHECK_VALUE(param->dim() == 1 && param->size(0) == channels, name, " must be a 1-D tensor of length ",
                    channels, " (the output channels), got shape ", param->sizes());
  TORCH_CHECK_VALUE(param->scalar_type() == like.scalar_type(), name, " must have the dtype of the inputs (",
                    like.scalar_type(), "), got ", param->scalar_type());
  TORCH_CHECK_VALUE(param->device() == like.device(), name, " must be on the inputs' device (", like.device(),
                    "), got ", param->device());
}

}  // namespace

UpsampleConcatShape check_upsample_concat(const at::Tensor& low, const at::Tensor& skip, const std::string& mode,
                                          const c10::optional<at::Tensor>& scale,
                                          const c10::optional<at::Tensor>& shift) {
  TORCH_CHECK_VALUE(low.dim() == 4, "low must be a 4-D [N, C, h, w] tensor, got shape ", low.sizes());
  TORCH_CHECK_VALUE(skip.dim() == 4, "skip must be a 4-D [N, C, H, W] tensor, got shape ", skip.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(low.scalar_type()), "low must be floating point, got ", low.scalar_type());
  TORCH_CHECK_VALUE(low.scalar_type() == skip.scalar_type(), "low and skip must have the same dtype, got ",
                    low.scalar_type(), " and ", skip.scalar_type());
  TORCH_CHECK_VALUE(low.device() == skip.device(), "low and skip must be on the same device, got ", low.device(),
                    " and ", skip.device());
  TORCH_CHECK_VALUE(low.size(0) == skip.size(0), "low and skip must have the same batch size, got low ",
                    low.sizes(), " and skip ", skip.sizes());
  TORCH_CHECK_VALUE(low.size(2) > 0 && low.size(3) > 0 && skip.size(2) > 0 && skip.size(3) > 0,
                    "low and skip must have non-empty spatial sizes, got low ", low.sizes(), " and skip ",
                    skip.sizes());
  UpsampleConcatShape shape;
  if (mode == "concat") {
    shape.mode = JoinMode::kConcat;
  } else if (mode == "add") {
    shape.mode = JoinMode::kAdd;
    TORCH_CHECK_VALUE(low.size(1) == skip.size(1), "mode='add' needs low and skip with the same channels, got low ",
                      low.sizes(), " and skip ", skip.sizes());
  } else {
    TORCH_CHECK_VALUE(false, "mode must be 'concat' or 'add', got '", mode, "'");
  }
  shape.batch = low.size(0);
  shape.low_channels = low.size(1);
  shape.low_height = low.size(2);
  shape.low_width = low.size(3);
  shape.skip_channels = skip.size(1);
  shape.height = skip.size(2);
  shape.width = skip.size(3);
  shape.out_channels = shape.mode == JoinMode::kConcat ? shape.low_channels + shape.skip_channels
                                                       : shape.skip_channels;
  const bool has_scale = scale.has_value() && scale->defined();
  const bool has_shift = shift.has_value() && shift->defined();
  TORCH_CHECK_VALUE(has_scale == has_shift, "scale and shift must be given together (or neither)");
  check_per_channel(scale, "scale", shape.out_channels, low);
  check_per_channel(shift, "shift", shape.out_channels, low);
  shape.has_affine = has_scale;
  return shape;
}

void check_row_window(const UpsampleConcatShape& shape, int64_t row_begin, int64_t row_count) {
  TORCH_CHECK_VALUE(row_count >= 0 && row_begin >= -1 && row_begin + row_count <= shape.height + 1,
                    "rows [", row_begin, ", ", row_begin + row_count, ") must lie within [-1, ", shape.height + 1,
                    "] for an output of height ", shape.height);
}

void check_rows_out(const at::Tensor& out, const UpsampleConcatShape& shape, int64_t row_count, bool channels_last,
                    const at::Tensor& skip) {
  TORCH_CHECK_VALUE(out.dim() == 4 && out.size(0) == shape.batch && out.size(1) == shape.out_channels &&
                        out.size(2) == row_count && out.size(3) == shape.width,
                    "out must have shape [", shape.batch, ", ", shape.out_channels, ", ", row_count, ", ", shape.width,
                    "], got ", out.sizes());
  TORCH_CHECK_VALUE(out.scalar_type() == skip.scalar_type() && out.device() == skip.device(),
                    "out must have skip's dtype and device, got ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK_VALUE(out.is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous),
                    "out must be ", channels_last ? "channels_last" : "NCHW", "-contiguous, got strides ",
                    out.strides());
}

UpsampleConcatShape check_upsample_concat_rows(const at::Tensor& low, const at::Tensor& skip, const std::string& mode,
                                               const c10::optional<at::Tensor>& scale,
                                               const c10::optional<at::Tensor>& shift, int64_t row_begin,
                                               int64_t row_count) {
  const UpsampleConcatShape shape = check_upsample_concat(low, skip, mode, scale, shift);
  check_row_window(shape, row_begin, row_count);
  return shape;
}

UpsampleConcatBackward prepare_upsample_concat_backward(const at::Tensor& grad_out, const at::Tensor& low,
                                                        const at::Tensor& skip, const std::string& mode,
                                                        const c10::optional<at::Tensor>& scale,
                                                        const c10::optional<at::Tensor>& shift, bool need_affine_grad) {
  UpsampleConcatBackward b;
  b.shape = check_upsample_concat(low, skip, mode, scale, shift);
  const UpsampleConcatShape& s = b.shape;
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == s.batch && grad_out.size(1) == s.out_channels &&
                        grad_out.size(2) == s.height && grad_out.size(3) == s.width,
                    "grad_out must have the output's shape [", s.batch, ", ", s.out_channels, ", ", s.height, ", ",
                    s.width, "], got ", grad_out.sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == skip.scalar_type() && grad_out.device() == skip.device(),
                    "grad_out must match skip's dtype and device, got ", grad_out.scalar_type(), " on ",
                    grad_out.device());
  TORCH_CHECK_VALUE(!need_affine_grad || s.has_affine, "need_affine_grad needs scale and shift");
  b.format = output_format(skip);
  b.low = low.contiguous(b.format);
  b.skip = skip.contiguous(b.format);
  b.grad_out = grad_out.contiguous(b.format);
  b.grad_low = at::empty_like(b.low, b.low.options().memory_format(b.format));
  b.grad_skip = at::empty_like(b.skip, b.skip.options().memory_format(b.format));
  const int64_t affine_len = need_affine_grad ? s.out_channels : 0;
  b.grad_scale = at::zeros({affine_len}, low.options());
  b.grad_shift = at::zeros({affine_len}, low.options());
  if (b.grad_out.numel() == 0) {
    b.grad_low.zero_();
    b.grad_skip.zero_();
  }
  return b;
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  m.def(
      "upsample_concat(Tensor low, Tensor skip, str mode, Tensor? scale, Tensor? shift, bool relu, "
      "bool align_corners) -> Tensor");
  // Rows [row_begin, row_begin + row_count) of upsample_concat's output in the requested layout; rows
  // just outside the image are zeros. Inference only (no autograd): ladder_blend runs its 3×3
  // convolution band by band on these, so the joined tensor is never stored whole.
  m.def(
      "upsample_concat_rows(Tensor low, Tensor skip, str mode, Tensor? scale, Tensor? shift, bool relu, "
      "bool align_corners, int row_begin, int row_count, bool channels_last) -> Tensor");
  m.def(
      "upsample_concat_rows.out(Tensor low, Tensor skip, str mode, Tensor? scale, Tensor? shift, bool relu, "
      "bool align_corners, int row_begin, int row_count, bool channels_last, *, Tensor(a!) out) -> Tensor(a!)");
  // Gradients to (low, skip, scale, shift). scale/shift gradients are [C] when need_affine_grad
  // and empty [0] otherwise. Deterministic: a gather over the outputs each input feeds, no atomics.
  m.def(
      "upsample_concat_backward(Tensor grad_out, Tensor low, Tensor skip, str mode, Tensor? scale, "
      "Tensor? shift, bool relu, bool align_corners, bool need_affine_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}

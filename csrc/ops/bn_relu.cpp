// Schema and argument checks of fastladder::bn_relu (kernels: cpu/ and cuda/).
#include "ops/bn_relu.h"

#include <torch/library.h>

namespace fastladder {
namespace ops {

void check_bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be a 4-D [N, C, H, W] tensor, got shape ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), "x must be floating point, got ", x.scalar_type());
  for (const auto& [param, name] : {std::pair<const at::Tensor&, const char*>{scale, "scale"}, {shift, "shift"}}) {
    TORCH_CHECK_VALUE(param.dim() == 1 && param.size(0) == x.size(1), name,
                      " must be a 1-D tensor of length C = ", x.size(1), " for x of shape ", x.sizes(),
                      ", got shape ", param.sizes());
    TORCH_CHECK_VALUE(param.scalar_type() == x.scalar_type(), name, " must have x's dtype (", x.scalar_type(),
                      "), got ", param.scalar_type());
    TORCH_CHECK_VALUE(param.device() == x.device(), name, " must be on x's device (", x.device(), "), got ",
                      param.device());
  }
}

void check_bn_relu_conv1x1(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_bn_relu(x, scale, shift);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 1 && weight.size(3) == 1,
                    "weight must be a [C_out, C = ", x.size(1), ", 1, 1] filter, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(),
                    "weight must have x's dtype and device (", x.scalar_type(), " on ", x.device(), "), got ",
                    weight.scalar_type(), " on ", weight.device());
  check_conv_bias(bias, weight.size(0), x);
}

void check_conv_bias(const c10::optional<at::Tensor>& bias, int64_t out_channels, const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_channels, "bias must be a [", out_channels,
                    "] tensor, got shape ", bias->sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(bias->scalar_type()) && bias->device() == x.device(),
                    "bias must be floating point on x's device, got ", bias->scalar_type(), " on ", bias->device());
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // Inference only (no autograd): conv2d(bn_relu(x, scale, shift), weight, bias) (then ReLU), the
  // activation never stored. Output in bn_relu's layout.
  m.def("bn_relu_conv1x1(Tensor x, Tensor scale, Tensor shift, Tensor weight, Tensor? bias, bool relu) -> Tensor");
  m.def("bn_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("bn_relu.out(Tensor x, Tensor scale, Tensor shift, *, Tensor(a!) out) -> Tensor(a!)");
  // Gradients to (x, scale, shift); scale/shift gradients are [C] when need_affine_grad, else [0].
  m.def("bn_relu_backward(Tensor grad_out, Tensor x, Tensor scale, Tensor shift, bool need_affine_grad) "
        "-> (Tensor, Tensor, Tensor)");
}

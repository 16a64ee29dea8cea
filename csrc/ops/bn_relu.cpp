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

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  m.def("bn_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("bn_relu.out(Tensor x, Tensor scale, Tensor shift, *, Tensor(a!) out) -> Tensor(a!)");
  // Gradients to (x, scale, shift); scale/shift gradients are [C] when need_affine_grad, else [0].
  m.def("bn_relu_backward(Tensor grad_out, Tensor x, Tensor scale, Tensor shift, bool need_affine_grad) "
        "-> (Tensor, Tensor, Tensor)");
}

// Schema, checks and the filter transform of fastladder::conv3x3_winograd (CPU kernel:
// cpu/winograd_kernel.cpp).
#include "ops/winograd.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "ops/bn_relu.h"

namespace fastladder {
namespace ops {

WinogradShape check_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be a 4-D [N, C_in, H, W] tensor, got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3 && (weight.size(0) == 36 || weight.size(0) == 16) &&
                        weight.size(1) == x.size(1),
                    "weight must be a [36 or 16, C_in = ", x.size(1), ", C_out] Winograd-domain filter "
                    "(fastladder.ops.winograd_weight of the [C_out, C_in, 3, 3] filter), got shape ",
                    weight.sizes());
  const int64_t tile = weight.size(0) == 36 ? 4 : 2;
  TORCH_CHECK_VALUE(padding.size() == 2 && (padding[0] == 0 || padding[0] == 1) &&
                        (padding[1] == 0 || padding[1] == 1),
                    "padding must be two values, each 0 or 1, got ", padding);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                        x.scalar_type() == at::kBFloat16,
                    "x must be float32, float64 or bfloat16, got ", x.scalar_type());
  // F(4×4)'s transforms multiply by up to 8: rounded to bfloat16 its tiles gave 20x the error of a direct
  // bfloat16 convolution (5e-2 of the largest output); F(2×2)'s only add.
  TORCH_CHECK_VALUE(x.scalar_type() != at::kBFloat16 || tile == 2,
                    "bfloat16 needs the F(2x2, 3x3) filter, winograd_weight(weight, output_tile=2) "
                    "([16, C_in, C_out]), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == x.scalar_type(), "weight must have x's dtype (", x.scalar_type(),
                    "), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), "weight must be on x's device (", x.device(), "), got ",
                    weight.device());
  const int64_t out_channels = weight.size(2);
  check_conv_bias(bias, out_channels, x);
  const int64_t out_height = x.size(2) + 2 * padding[0] - 2, out_width = x.size(3) + 2 * padding[1] - 2;
  TORCH_CHECK_VALUE(out_height >= 0 && out_width >= 0, "x of shape ", x.sizes(), " is smaller than the 3x3 ",
                    "filter with padding ", padding);
  return {x.size(0), x.size(1), out_channels, x.size(2), x.size(3), out_height, out_width, padding[0], padding[1],
          tile};
}

namespace {

// [C_out, C_in, 3, 3] -> [α², C_in, C_out]: G g Gᵀ per filter, computed in float64 and rounded once.
// A composite of ATen operators: every device, and differentiable.
at::Tensor winograd_weight(const at::Tensor& weight, int64_t output_tile) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
                    "weight must be a [C_out, C_in, 3, 3] filter, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(weight.scalar_type()), "weight must be floating point, got ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(output_tile == 4 || output_tile == 2, "output_tile must be 4 (F(4x4, 3x3)) or 2 "
                    "(F(2x2, 3x3)), got ", output_tile);
  const int64_t alpha = output_tile + 2;
  const auto G = [&](int64_t i) { return output_tile == 4 ? kWinograd4G[i] : kWinograd2G[i]; };
  // G g Gᵀ with G's entries as scalars (a constant tensor would not mix with fake tensors: torch.compile)
  const at::Tensor w = weight.to(at::kDouble);
  const auto combine = [](const at::Tensor& t, int64_t dim, const double* coefficients) {
    return t.select(dim, 0) * coefficients[0] + t.select(dim, 1) * coefficients[1] + t.select(dim, 2) * coefficients[2];
  };
  std::vector<at::Tensor> entries;
  for (int64_t i = 0; i < alpha; ++i) {
    const at::Tensor row = combine(w, 2, G(i));  // (G g)[i]: [C_out, C_in, 3]
    for (int64_t j = 0; j < alpha; ++j) entries.push_back(combine(row, 2, G(j)));
  }
  return at::stack(entries).transpose(1, 2).to(weight.scalar_type()).contiguous();  // [α², C_in, C_out]
}

}  // namespace

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  m.def("winograd_weight(Tensor weight, int output_tile=4) -> Tensor");
  // Inference only (no autograd); weight is winograd_weight's [36 or 16, C_in, C_out] filter. Output
  // [N, C_out, H + 2 padding[0] - 2, W + 2 padding[1] - 2] in x's layout (output_format).
  m.def("conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, int[2] padding, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastladder, CompositeImplicitAutograd, m) {
  m.impl("winograd_weight", &fastladder::ops::winograd_weight);
}

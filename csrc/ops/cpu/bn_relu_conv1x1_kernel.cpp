// CPU kernel of fastladder::bn_relu_conv1x1: conv2d(bn_relu(x), weight, bias) (then ReLU).
//
// bfloat16 (the dense layers' BN-ReLU-1×1 of optimize_for_inference(dtype=torch.bfloat16)) runs fused:
// blocks of 12 pixels, each pixel's C channels put through bn_relu's own loop into a block buffer that
// stays in L1, then multiplied with the filter (cpu/gemm_bf16.h: AVX512_BF16 dot products, float32 sums,
// bias and ReLU, one rounding). The BN-ReLU activation, as wide as the whole dense-block prefix, is never
// written to memory and read back, as it is between bn_relu and a separate convolution. Other dtypes run
// bn_relu and then ATen's convolution.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/bn_relu.h"
#include "ops/cpu/gemm_bf16.h"

namespace fastladder {
namespace ops {

namespace {

constexpr int64_t kBlockPixels = 12;  // one register block of gemm_bf16's rows

// A small parameter tensor's values as floats (without a .to(float) per call: 3 tensors a call, 64 calls
// a frame).
std::vector<float> as_float(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<float> values(c.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "bn_relu_conv1x1_params", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(p[i]);
  });
  return values;
}

void fused_bf16(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& weight,
                const c10::optional<at::Tensor>& bias, bool relu, at::Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), K = weight.size(0);
  const int64_t pixels = N * HW, Cp = (C + 1) / 2 * 2;  // pairs of channels: an odd C gets a zero channel
  const std::vector<float> sc = as_float(scale), sh = as_float(shift);
  const std::vector<float> bias_values = bias.has_value() && bias->defined() ? as_float(*bias) : std::vector<float>();
  const float* bias_ptr = bias_values.empty() ? nullptr : bias_values.data();
  // weight [K, C]: B[c, k] at c + k·C
  const at::Tensor w = weight.contiguous();
  std::vector<uint16_t> packed(Cp * K);
  pack_bf16_pairs(static_cast<const uint16_t*>(w.const_data_ptr()), 1, C, C, K, packed.data());
  const auto* xp = static_cast<const uint16_t*>(x.const_data_ptr());
  auto* op = static_cast<uint16_t*>(out.data_ptr());
  const int64_t pixel_stride = x.stride(3), image_stride = x.stride(0);
  const int64_t blocks = (pixels + kBlockPixels - 1) / kBlockPixels;
  at::parallel_for(0, blocks, 8, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> act(kBlockPixels * Cp, 0);  // the pad channel stays 0
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlockPixels, count = std::min(kBlockPixels, pixels - first);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t p = first + i;
        affine_relu_pixel_bf16_bits(xp + (p / HW) * image_stride + (p % HW) * pixel_stride, sc.data(), sh.data(),
                                    act.data() + i * Cp, C);
      }
      gemm_bf16_bias_relu(act.data(), Cp, packed.data(), count, Cp / 2, K, bias_ptr, relu, op + first * K, K);
    }
  });
}

at::Tensor bn_relu_conv1x1_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                               const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool relu) {
  check_bn_relu_conv1x1(x_in, scale, shift, weight, bias);
  const at::MemoryFormat format = bn_relu_output_format(x_in);
  if (x_in.numel() == 0) {  // no pixels, or no input channels: the bias (then the ReLU) everywhere
    at::Tensor out = at::zeros({x_in.size(0), weight.size(0), x_in.size(2), x_in.size(3)},
                               x_in.options().memory_format(format));
    if (bias.has_value() && bias->defined()) out.add_(bias->to(x_in.scalar_type()).view({1, -1, 1, 1}));
    return relu ? out.relu_() : out;
  }
  if (x_in.scalar_type() != at::kBFloat16) {
    static auto bn_relu_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("fastladder::bn_relu", "")
                                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
    at::Tensor y = at::conv2d(bn_relu_op.call(x_in, scale, shift), weight.contiguous(format),
                              bias.has_value() && bias->defined() ? bias->to(x_in.scalar_type()) : at::Tensor());
    if (relu) y.relu_();
    return y.contiguous(format);
  }
  // the fused kernel reads x as NHWC pixels: channels_last, or a channel slice of it, in place
  const at::Tensor x = format == at::MemoryFormat::ChannelsLast ? x_in : x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3)},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() > 0) fused_bf16(x, scale, shift, weight, bias, relu, out);
  return out.contiguous(format);
}

}  // namespace

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_IMPL(fastladder, CPU, m) {
  m.impl("bn_relu_conv1x1", &fastladder::ops::bn_relu_conv1x1_cpu);
}

// fastladder::ladder_blend_bands: the inference form of ladder_blend,
// conv2d(upsample_concat(...), weight, bias, padding=1) computed one horizontal band of output rows
// at a time, so that the joined (upsampled + concatenated) tensor is never stored whole.
//
// Each band's joined input, with a one-row halo (rows beyond the image are the convolution's zero
// padding), comes from upsample_concat_rows in channels_last, the layout oneDNN and cuDNN convolve
// fastest; the convolution pads along x only; its result is copied into the band's rows of the
// output, which keeps skip's layout. Composite of dispatched operators: every backend runs it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/layout.h"
#include "ops/upsample_concat.h"

namespace fastladder {
namespace ops {

namespace {

// dst[n, c, y, x] = src[n, c, y, x] for a channels_last src and a dst whose (n, c) planes are each
// one contiguous y*x run (an NCHW tensor, or a band of its rows): a tiled transpose, because
// at::Tensor::copy_ walks the destination and so reads a channels_last source with stride C.
template <typename scalar_t>
void copy_channels_last_to_planes(const at::Tensor& src, at::Tensor& dst) {
  constexpr int64_t kTile = 32;
  const int64_t N = src.size(0), C = src.size(1), P = src.size(2) * src.size(3);
  const scalar_t* sp = src.data_ptr<scalar_t>();
  scalar_t* dp = dst.data_ptr<scalar_t>();
  const int64_t ctiles = (C + kTile - 1) / kTile, ptiles = (P + kTile - 1) / kTile;
  at::parallel_for(0, N * ctiles * ptiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pt = task % ptiles, ct = (task / ptiles) % ctiles, n = task / (ptiles * ctiles);
      const int64_t c0 = ct * kTile, c1 = std::min(C, c0 + kTile), p0 = pt * kTile, p1 = std::min(P, p0 + kTile);
      const scalar_t* s = sp + n * src.stride(0);
      scalar_t* d = dp + n * dst.stride(0);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t p = p0; p < p1; ++p) d[c * dst.stride(1) + p] = s[p * C + c];
    }
  });
}

at::Tensor ladder_blend_bands(const at::Tensor& low, const at::Tensor& skip, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, c10::string_view mode,
                              const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                              bool relu, bool align_corners, int64_t band_rows,
                              const c10::optional<at::Tensor>& winograd_weight) {
  const UpsampleConcatShape s = check_upsample_concat(low, skip, std::string(mode), scale, shift);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == s.out_channels && weight.size(2) == 3 &&
                        weight.size(3) == 3,
                    "weight must be a [C_out, ", s.out_channels, ", 3, 3] tensor for the joined input, got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == skip.scalar_type() && weight.device() == skip.device(),
                    "weight must have skip's dtype and device, got ", weight.scalar_type(), " on ", weight.device());
  TORCH_CHECK_VALUE(band_rows > 0, "band_rows must be positive, got ", band_rows);
  const at::MemoryFormat format = output_format(skip);
  at::Tensor out = at::empty({s.batch, weight.size(0), s.height, s.width}, skip.options().memory_format(format));
  if (out.numel() == 0) return out;
  static auto rows_op = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastladder::upsample_concat_rows", "out")
                            .typed<at::Tensor&(const at::Tensor&, const at::Tensor&, c10::string_view,
                                               const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                               bool, bool, int64_t, int64_t, bool, at::Tensor&)>();
  // The band's 3×3: Winograd (ops/winograd.h) when the caller has the transformed filter for a CPU input
  // (F(4×4) in float32: 0.44× oneDNN's time for the 256→128 blend at 1/4 of 1024×2048; F(2×2) in
  // bfloat16: 0.57×), else ATen's conv2d.
  static auto winograd_op = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("fastladder::conv3x3_winograd", "")
                                .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                  const c10::optional<at::Tensor>&, at::IntArrayRef, bool)>();
  const bool has_winograd = winograd_weight.has_value() && winograd_weight->defined();
  if (has_winograd) {
    const int64_t positions = winograd_weight->dim() == 3 ? winograd_weight->size(0) : 0;
    TORCH_CHECK_VALUE((positions == 36 || positions == 16) && winograd_weight->size(1) == weight.size(1) &&
                          winograd_weight->size(2) == weight.size(0),
                      "winograd_weight must be winograd_weight(weight), a [36 or 16, ", weight.size(1), ", ",
                      weight.size(0), "] tensor, got shape ", winograd_weight->sizes());
  }
  const bool winograd = has_winograd && skip.is_cpu() && winograd_weight->scalar_type() == skip.scalar_type() &&
                        (skip.scalar_type() == at::kFloat || skip.scalar_type() == at::kDouble ||
                         (skip.scalar_type() == at::kBFloat16 && winograd_weight->size(0) == 16));
  const at::Tensor weight_cl = weight.contiguous(at::MemoryFormat::ChannelsLast);  // once, not once per band
  const bool transpose_on_cpu = out.is_cpu() && format == at::MemoryFormat::Contiguous;
  // One band buffer for all bands (the last, shorter one gets its own): a fresh buffer per band
  // would cost its page faults again every band.
  at::Tensor buffer = at::empty({s.batch, s.out_channels, std::min(band_rows, s.height) + 2, s.width},
                                skip.options().memory_format(at::MemoryFormat::ChannelsLast));
  for (int64_t first = 0; first < s.height; first += band_rows) {
    const int64_t count = std::min(band_rows, s.height - first);
    if (buffer.size(2) != count + 2) {
      buffer = at::empty({s.batch, s.out_channels, count + 2, s.width},
                         skip.options().memory_format(at::MemoryFormat::ChannelsLast));
    }
    rows_op.call(low, skip, mode, scale, shift, relu, align_corners, first - 1, count + 2, /*channels_last=*/true,
                 buffer);
    at::Tensor result = winograd ? winograd_op.call(buffer, *winograd_weight, bias, {0, 1}, false)
                                 : at::conv2d(buffer, weight_cl, bias, /*stride=*/at::IntArrayRef{1, 1},
                                              /*padding=*/at::IntArrayRef{0, 1});
    if (count == s.height && result.sizes() == out.sizes() && result.is_contiguous(format)) {
      return result;  // a single band already in the output's layout: no copy
    }
    at::Tensor rows = out.narrow(2, first, count);
    if (transpose_on_cpu && is_channels_last(result)) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ladder_blend_bands_copy",
                                      [&] { copy_channels_last_to_planes<scalar_t>(result, rows); });
    } else {
      rows.copy_(result);
    }
  }
  return out;
}

}  // namespace

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // Inference only (no autograd): ladder_blend calls it when no gradient is needed.
  m.def(
      "ladder_blend_bands(Tensor low, Tensor skip, Tensor weight, Tensor? bias, str mode, Tensor? scale, "
      "Tensor? shift, bool relu, bool align_corners, int band_rows, Tensor? winograd_weight=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastladder, CompositeExplicitAutograd, m) {
  m.impl("ladder_blend_bands", &fastladder::ops::ladder_blend_bands);
}

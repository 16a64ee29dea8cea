// fastladder::conv3x3_winograd: 3×3 convolution (stride 1, dilation 1, padding 0 or 1 per axis) by
// the Winograd minimal-filtering algorithm F(m×m, 3×3) (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016). Each m×m output tile is
//     Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A
// for its α×α input patch d_c (α = m + 2) and 3×3 filter g_c per input channel. The Σ_c is, for each
// of the α² tile positions, a matrix product [tiles, C_in] @ [C_in, C_out]. Two variants, told apart by
// the filter's first dimension (α²):
// - F(4×4, 3×3), 36 positions: 36 multiplications per tile and channel pair instead of 144. The
//   interpolation points are 0, ±1, ±2 and ∞; in float32 the result is within a few 1e-6 of the largest
//   output, but its transforms multiply by up to 8 and 5, which bfloat16 cannot carry (tests measure it).
// - F(2×2, 3×3), 16 positions: 16 instead of 36 multiplications; the transforms only add and halve, so
//   it also runs in bfloat16 (transformed tiles and filters rounded to bfloat16, sums in float32).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

// G (α×3): the filter transforms, G g Gᵀ. The input transforms Bᵀ and output transforms Aᵀ are written
// out in cpu/winograd_kernel.cpp, whose comments give them as matrices.
constexpr double kWinograd4G[6][3] = {
    {1.0 / 4, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0, 0, 1},
};
constexpr double kWinograd2G[4][3] = {
    {1, 0, 0},
    {0.5, 0.5, 0.5},
    {0.5, -0.5, 0.5},
    {0, 0, 1},
};

struct WinogradShape {
  int64_t batch, in_channels, out_channels, in_height, in_width, out_height, out_width, pad_h, pad_w;
  int64_t tile;  // output rows and columns per tile: 4 or 2
};

// Checks conv3x3_winograd's arguments and returns the output shape.
WinogradShape check_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef padding);

}  // namespace ops
}  // namespace fastladder

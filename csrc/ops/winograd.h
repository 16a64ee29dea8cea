// fastladder::conv3x3_winograd: 3×3 convolution (stride 1, dilation 1, padding 0 or 1 per axis) by
// the Winograd minimal-filtering algorithm F(4×4, 3×3) (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016). Each 4×4 output tile is
//     Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A
// for its 6×6 input patch d_c and 3×3 filter g_c per input channel: 36 multiplications per tile and
// channel pair instead of 144. The Σ_c is, for each of the 36 tile positions, a matrix product
// [tiles, C_in] @ [C_in, C_out]. The interpolation points are 0, ±1, ±2 and ∞; with them the float32
// result is within a few 1e-6 of the largest output (tests measure it).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

// G (6×3): the filter transform, G g Gᵀ. The input transform Bᵀ and output transform Aᵀ are written
// out in cpu/winograd_kernel.cpp, whose comments give them as matrices.
constexpr double kWinogradG[6][3] = {
    {1.0 / 4, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0, 0, 1},
};
constexpr int64_t kWinogradTile = 4;     // output rows and columns per tile
constexpr int64_t kWinogradAlpha = 6;    // input rows and columns per tile (tile + 3 - 1)

struct WinogradShape {
  int64_t batch, in_channels, out_channels, in_height, in_width, out_height, out_width, pad_h, pad_w;
};

// Checks conv3x3_winograd's arguments and returns the output shape.
WinogradShape check_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef padding);

}  // namespace ops
}  // namespace fastladder

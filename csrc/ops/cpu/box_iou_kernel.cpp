// CPU kernel of fastladder::box_iou: rows of the [N, M] result in parallel; the arithmetic is
// common/iou.h, shared with the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/box_iou.h"
#include "ops/common/iou.h"

namespace fastladder {
namespace ops {

namespace {

template <typename scalar_t>
void box_iou_kernel(const at::Tensor& boxes1, const at::Tensor& boxes2, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  const scalar_t* a = boxes1.data_ptr<scalar_t>();
  const scalar_t* b = boxes2.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  // boxes2 as acc_t columns with their areas: the inner loop reads contiguous arrays and vectorizes
  std::vector<acc_t> bx1(m), by1(m), bx2(m), by2(m), barea(m);
  for (int64_t j = 0; j < m; ++j) {
    bx1[j] = static_cast<acc_t>(b[4 * j]);
    by1[j] = static_cast<acc_t>(b[4 * j + 1]);
    bx2[j] = static_cast<acc_t>(b[4 * j + 2]);
    by2[j] = static_cast<acc_t>(b[4 * j + 3]);
    barea[j] = common::box_area(bx1[j], by1[j], bx2[j], by2[j]);
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(m);
    for (int64_t i = begin; i < end; ++i) {
      const acc_t ax1 = static_cast<acc_t>(a[4 * i]), ay1 = static_cast<acc_t>(a[4 * i + 1]);
      const acc_t ax2 = static_cast<acc_t>(a[4 * i + 2]), ay2 = static_cast<acc_t>(a[4 * i + 3]);
      const acc_t aarea = common::box_area(ax1, ay1, ax2, ay2);
      for (int64_t j = 0; j < m; ++j) {
        const acc_t inter = common::intersection_area(ax1, ay1, ax2, ay2, bx1[j], by1[j], bx2[j], by2[j]);
        row[j] = common::iou_from_areas(inter, aarea, barea[j]);
      }
      scalar_t* out_row = o + i * m;
      for (int64_t j = 0; j < m; ++j) out_row[j] = static_cast<scalar_t>(row[j]);
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou(boxes1_in, boxes2_in);
  at::Tensor out = at::empty({boxes1_in.size(0), boxes2_in.size(0)}, boxes1_in.options());
  if (out.numel() == 0) return out;
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cpu",
                                  [&] { box_iou_kernel<scalar_t>(boxes1, boxes2, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastladder, CPU, m) { m.impl("box_iou", &box_iou_cpu); }

}  // namespace ops
}  // namespace fastladder

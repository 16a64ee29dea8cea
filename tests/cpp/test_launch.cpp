// Tests of csrc/ops/common/launch.h: every grid the CUDA kernels launch stays within CUDA's limits,
// and the kernels' loops over the capped dimensions still visit every item exactly once.
#include <cstdint>
#include <vector>

#include "check.h"
#include "ops/common/launch.h"

namespace launch = fastladder::launch;

static void test_stride_blocks() {
  CHECK(launch::stride_blocks(0) == 1);
  CHECK(launch::stride_blocks(1) == 1);
  CHECK(launch::stride_blocks(256) == 1);
  CHECK(launch::stride_blocks(257) == 2);
  CHECK(launch::stride_blocks(int64_t(1) << 40) == launch::kMaxStrideBlocks);
  CHECK(launch::kMaxStrideBlocks <= launch::kMaxGridX);
}

// ssd_postprocess: batch x reported classes NMS problems; 80 classes at batch 820 = 65600 tasks,
// above gridDim.z's 65535: the grid is capped and the kernel loops over z.
static void test_tile_grid_covers_every_task() {
  for (int64_t tasks : {int64_t(1), int64_t(7), int64_t(65535), int64_t(820) * 80, int64_t(1000) * 90,
                        int64_t(3) * 65535 + 2}) {
    const launch::Shape s = launch::tile_grid(/*words=*/4, tasks);
    CHECK(launch::fits(s));
    CHECK(s.x == 4 && s.y == 4);
    std::vector<int> visits(static_cast<size_t>(tasks), 0);
    for (int64_t z = 0; z < s.z; ++z)  // the kernel's loop: task = blockIdx.z; task += gridDim.z
      for (int64_t task = z; task < tasks; task += s.z) ++visits[static_cast<size_t>(task)];
    bool once = true;
    for (int v : visits) once = once && v == 1;
    CHECK(once);
  }
  CHECK(launch::tile_grid(4, 820 * 80).z == launch::kMaxGridYZ);
  CHECK(launch::fits(launch::tile_grid(launch::ceil_div(4194240, 64), 1)));      // nms: 4,194,240 boxes fit
  CHECK(!launch::fits(launch::tile_grid(launch::ceil_div(4194241, 64), 1)));     // one more does not
  CHECK(launch::fits(launch::tile_grid(0, 0)));                                   // never a zero dimension
}

static void test_per_item_and_reduction_grids() {
  CHECK(launch::fits(launch::per_item_grid(1)));
  CHECK(launch::fits(launch::per_item_grid(launch::kMaxGridX)));
  CHECK(!launch::fits(launch::per_item_grid(launch::kMaxGridX + 1)));
  CHECK(launch::per_item_grid(0).x == 1);
  for (int64_t pixels : {int64_t(0), int64_t(1), int64_t(4095), int64_t(1) << 20, int64_t(1) << 34}) {
    const launch::Shape s = launch::reduction_grid(/*lanes=*/1000, /*lane_block=*/32, pixels);
    CHECK(launch::fits(s));
    CHECK(s.x == 32 && s.y >= 1 && s.y <= launch::kMaxParts);
  }
  CHECK(launch::reduction_parts(100) == 1);
  CHECK(launch::reduction_parts(int64_t(1) << 30) == launch::kMaxParts);
}

static void test_fits() {
  CHECK(launch::fits({launch::kMaxGridX, launch::kMaxGridYZ, launch::kMaxGridYZ}));
  CHECK(!launch::fits({1, launch::kMaxGridYZ + 1, 1}));
  CHECK(!launch::fits({1, 1, launch::kMaxGridYZ + 1}));
  CHECK(!launch::fits({0, 1, 1}));
}

int main() {
  test_stride_blocks();
  test_tile_grid_covers_every_task();
  test_per_item_and_reduction_grids();
  test_fits();
  return fastladder_test::summary();
}

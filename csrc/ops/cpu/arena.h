// A memory arena for CPU inference: large blocks freed during one call are kept for the next.
//
// A fresh block of tens of megabytes comes from mmap, and the kernel faults and zeroes each of its
// pages on first touch: at 1024×2048 the LDN's large activations cost about 0.25 s of page faults per
// frame on the build machine (2.06 s → 1.74 s float32 with glibc's heap reusing them instead), which
// ONNX Runtime and OpenVINO avoid with their own arenas. While a thread is inside an ArenaScope, the CPU
// allocator serves its allocations of at least kArenaMinBytes from blocks freed earlier (best fit,
// at most 1/4 larger than asked), and keeps the blocks freed for reuse, up to the peak it has served.
// Idle blocks are kept only while at least one arena user (an inference model) exists.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastladder {
namespace arena {

constexpr std::size_t kArenaMinBytes = std::size_t(1) << 20;  // smaller ones: glibc's heap reuses them

// Allocations on this thread go through the arena while at least one scope is open.
void enter();
void exit();

// An inference model that will call again; when the last one goes, the idle blocks are freed.
void add_user();
void remove_user();

struct Stats {
  std::size_t live_bytes, idle_bytes, peak_bytes, idle_blocks;
  std::int64_t users, reused, fresh;
};
Stats stats();

}  // namespace arena
}  // namespace fastladder

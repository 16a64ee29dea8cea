// A memory arena for CPU inference: large blocks freed during one call are kept for the next.
//
// A fresh block of tens of megabytes comes from mmap, and the kernel faults and zeroes each of its
// pages on first touch: at 1024×2048 the LDN's large activations cost 0.2-0.3 s of page faults per
// frame on the build machine (float32 1.83 s → 1.39 s, bfloat16 1.25 s → 1.06 s once they are reused),
// which ONNX Runtime and OpenVINO avoid with their own arenas. While a thread is inside an arena scope,
// the CPU allocator serves its allocations of at least kArenaMinBytes from the smallest idle block that
// fits, and keeps the blocks freed for reuse while the idle ones add up to at most twice the most it has
// had in use at once (with that bound, every large block of an LDN call is reused on the next call at
// 448×1024 and 1024×2048). Idle blocks are kept only while at least one arena user (an inference model)
// exists.
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

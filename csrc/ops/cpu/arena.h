// Memory arenas for CPU inference: the large blocks a model frees during one call are kept for its next.
//
// A fresh block of tens of megabytes comes from mmap, and the kernel faults and zeroes each of its
// pages on first touch: at 1024×2048 the LDN's large activations cost 0.2-0.3 s of page faults per
// frame on the build machine (float32 1.83 s → 1.39 s, bfloat16 1.25 s → 1.06 s once they are reused),
// which ONNX Runtime and OpenVINO avoid with their own arenas.
//
// Each inference model owns an Arena. While a thread is inside the arena's scope (enter/exit), the CPU
// allocator serves its allocations of at least kArenaMinBytes from the smallest idle block of that arena
// that fits, and a block freed later (on any thread) goes back to the arena that gave it out, which keeps
// it while its idle blocks add up to at most twice the most it has had in use at once (with that bound,
// every large block of an LDN call is reused on the next call at 448×1024 and 1024×2048). Closing the
// arena (its model is deleted) frees the idle blocks; blocks still in use are freed when they are.
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace fastladder {
namespace arena {

constexpr std::size_t kArenaMinBytes = std::size_t(1) << 20;  // smaller ones: glibc's heap reuses them

struct Stats {
  std::size_t live_bytes, idle_bytes, peak_bytes, idle_blocks;
  std::int64_t reused, fresh;
};

class Arena : public std::enable_shared_from_this<Arena> {
 public:
  // Allocations on this thread come from this arena until exit() (scopes nest; the innermost wins).
  void enter();
  void exit();
  // Frees the idle blocks and keeps no more.
  void close();
  Stats stats();

  struct Block {
    c10::DataPtr memory;  // from the CPU allocator the arenas wrap
    std::size_t size;
    std::shared_ptr<Arena> owner;
  };
  Block* take(std::size_t n);        // the smallest idle block of at least n bytes, or nullptr
  void add_fresh(Block* block);      // a block just allocated for this arena
  void give_back(Block* block);      // keeps the block, or frees it
  void trim();                       // frees the idle blocks

 private:
  std::mutex mutex_;
  std::multimap<std::size_t, Block*> idle_;
  std::size_t live_bytes_ = 0, idle_bytes_ = 0, peak_bytes_ = 0;
  std::int64_t reused_ = 0, fresh_ = 0;
  bool open_ = true;
};

}  // namespace arena
}  // namespace fastladder

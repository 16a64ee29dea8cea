// The CPU inference arenas (arena.h) and the c10::Allocator that serves them. The allocator wraps the
// CPU allocator installed before it (on the first enter()); outside arena scopes it hands every request
// to that allocator unchanged.
#include "ops/cpu/arena.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <unordered_map>
#include <vector>

namespace fastladder {
namespace arena {

namespace {

thread_local std::vector<std::shared_ptr<Arena>> scopes;  // this thread's open scopes, innermost last

class ArenaAllocator final : public c10::Allocator {
 public:
  explicit ArenaAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(std::size_t n) override {
    if (scopes.empty() || n < kArenaMinBytes) return base_->allocate(n);
    const std::shared_ptr<Arena>& arena = scopes.back();
    Arena::Block* block = arena->take(n);
    if (block == nullptr) {
      c10::DataPtr memory;
      try {
        memory = base_->allocate(n);
      } catch (const c10::Error&) {  // out of memory: give the idle blocks back and try once more
        arena->trim();
        memory = base_->allocate(n);
      }
      block = new Arena::Block{std::move(memory), n, arena};
      arena->add_fresh(block);
    }
    void* data = block->memory.get();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.emplace(data, block);
    }
    // A "simple" data pointer (its context is the data itself), as c10's raw_allocate requires.
    return c10::DataPtr(data, data, &release, c10::Device(c10::DeviceType::CPU));
  }

  // Also frees what was allocated before or outside the arenas: that goes to the wrapped allocator.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void free(void* data) {
    Arena::Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = blocks_.find(data);
      if (it != blocks_.end()) {
        block = it->second;
        blocks_.erase(it);
      }
    }
    if (block != nullptr) {
      block->owner->give_back(block);
      return;
    }
    const c10::DeleterFnPtr base_deleter = base_->raw_deleter();
    TORCH_INTERNAL_ASSERT(base_deleter != nullptr, "fastladder arena: a pointer it cannot free");
    base_deleter(data);
  }

  static void release(void* data);

 private:
  c10::Allocator* base_;
  std::mutex mutex_;
  std::unordered_map<void*, Arena::Block*> blocks_;  // in use, by data pointer
};

// Installed on first use and never destroyed: blocks it gave out may be freed at any time, even at
// interpreter exit.
ArenaAllocator& allocator() {
  static ArenaAllocator* installed = [] {
    auto* created = new ArenaAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(created, /*priority=*/1);
    return created;
  }();
  return *installed;
}

void ArenaAllocator::release(void* data) { allocator().free(data); }

}  // namespace

void Arena::enter() {
  allocator();
  scopes.push_back(shared_from_this());
}

void Arena::exit() {
  const auto it = std::find(scopes.rbegin(), scopes.rend(), shared_from_this());
  if (it != scopes.rend()) scopes.erase(std::next(it).base());
}

Arena::Block* Arena::take(std::size_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = idle_.lower_bound(n);
  if (it == idle_.end()) return nullptr;
  Block* block = it->second;
  idle_.erase(it);
  idle_bytes_ -= block->size;
  live_bytes_ += block->size;
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  ++reused_;
  return block;
}

void Arena::add_fresh(Block* block) {
  std::lock_guard<std::mutex> lock(mutex_);
  live_bytes_ += block->size;
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  ++fresh_;
}

void Arena::give_back(Block* block) {
  const std::shared_ptr<Arena> keep_alive = std::move(block->owner);  // outlives the lock below
  {
    std::lock_guard<std::mutex> lock(mutex_);
    live_bytes_ -= block->size;
    if (open_ && idle_bytes_ + block->size <= 2 * peak_bytes_) {
      block->owner = keep_alive;
      idle_.emplace(block->size, block);
      idle_bytes_ += block->size;
      return;
    }
  }
  delete block;  // returns the memory to the wrapped allocator
}

void Arena::trim() {
  std::multimap<std::size_t, Block*> freed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    freed.swap(idle_);
    idle_bytes_ = 0;
  }
  for (auto& entry : freed) delete entry.second;  // each drops a reference to this arena: `this` may go
}

void Arena::close() {
  const std::shared_ptr<Arena> keep_alive = shared_from_this();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
  }
  trim();
}

Stats Arena::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return {live_bytes_, idle_bytes_, peak_bytes_, idle_.size(), reused_, fresh_};
}

}  // namespace arena
}  // namespace fastladder

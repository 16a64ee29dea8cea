// The CPU inference arena (arena.h): a c10::Allocator that wraps the CPU allocator installed before it.
// Outside arena scopes it hands every request to that allocator unchanged.
#include "ops/cpu/arena.h"

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

namespace fastladder {
namespace arena {

namespace {

thread_local int scope_depth = 0;

struct Block {
  c10::DataPtr memory;  // from the wrapped allocator
  std::size_t size;
};

class Arena final : public c10::Allocator {
 public:
  explicit Arena(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(std::size_t n) override {
    if (scope_depth == 0 || n < kArenaMinBytes) return base_->allocate(n);
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.lower_bound(n);
      if (it != idle_.end()) {
        block = it->second;
        idle_.erase(it);
        idle_bytes_ -= block->size;
        ++reused_;
      } else {
        ++fresh_;
      }
    }
    if (block == nullptr) {
      try {
        block = new Block{base_->allocate(n), n};
      } catch (const c10::Error&) {  // out of memory: give the idle blocks back and try once more
        trim();
        block = new Block{base_->allocate(n), n};
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ += block->size;
      peak_bytes_ = std::max(peak_bytes_, live_bytes_);
    }
    void* data = block->memory.get();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.emplace(data, block);
    }
    // A "simple" data pointer (its context is the data itself), as c10's raw_allocate requires.
    return c10::DataPtr(data, data, &Arena::release, c10::Device(c10::DeviceType::CPU));
  }

  // Also frees what raw_allocate gave out before or outside the arena: those go to the wrapped allocator.
  c10::DeleterFnPtr raw_deleter() const override { return &Arena::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void* context);

  void give_back(void* data) {
    Block* block;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = blocks_.find(data);
      if (it == blocks_.end()) {
        block = nullptr;
      } else {
        block = it->second;
        blocks_.erase(it);
      }
    }
    if (block == nullptr) {
      const c10::DeleterFnPtr base_deleter = base_->raw_deleter();
      TORCH_INTERNAL_ASSERT(base_deleter != nullptr, "fastladder arena: a pointer it did not give out");
      base_deleter(data);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ -= block->size;
      if (users_ > 0 && idle_bytes_ + block->size <= 2 * peak_bytes_) {
        idle_.emplace(block->size, block);
        idle_bytes_ += block->size;
        return;
      }
    }
    delete block;  // returns the memory to the wrapped allocator
  }

  void change_users(std::int64_t delta) {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      users_ += delta;
      last = users_ <= 0;
      if (last) peak_bytes_ = live_bytes_;
    }
    if (last) trim();
  }

  // Frees every idle block.
  void trim() {
    std::multimap<std::size_t, Block*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      freed.swap(idle_);
      idle_bytes_ = 0;
    }
    for (auto& entry : freed) delete entry.second;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {live_bytes_, idle_bytes_, peak_bytes_, idle_.size(), users_, reused_, fresh_};
  }

 private:
  c10::Allocator* base_;
  std::mutex mutex_;
  std::multimap<std::size_t, Block*> idle_;
  std::unordered_map<void*, Block*> blocks_;  // in use, by data pointer
  std::size_t live_bytes_ = 0, idle_bytes_ = 0, peak_bytes_ = 0;
  std::int64_t users_ = 0, reused_ = 0, fresh_ = 0;
};

// Installed on first use and never destroyed: blocks it handed out may be freed at any time, even
// at interpreter exit.
Arena& instance() {
  static Arena* arena = [] {
    auto* created = new Arena(c10::GetCPUAllocator());
    c10::SetCPUAllocator(created, /*priority=*/1);
    return created;
  }();
  return *arena;
}

void Arena::release(void* data) { instance().give_back(data); }

}  // namespace

void enter() {
  instance();
  ++scope_depth;
}

void exit() { scope_depth = std::max(0, scope_depth - 1); }

void add_user() { instance().change_users(1); }

void remove_user() { instance().change_users(-1); }

Stats stats() { return instance().stats(); }

}  // namespace arena
}  // namespace fastladder

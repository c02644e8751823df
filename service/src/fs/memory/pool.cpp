#include "fs/memory/pool.h"

#include "fs/memory/store.h"

#include <unistd.h>

#include <cstring>
#include <new>

namespace efuse::fs::memory {

void BlockReturn::operator()(Block* b) const noexcept {
  if (b != nullptr) pool->give(b);
}

Pool::Pool(uint64_t max_bytes, uint64_t max_inodes)
    : limit_(max_bytes / kBlockSize), max_inodes_(max_inodes) {}

Pool::~Pool() {
  for (Block* b : free_) delete b;
}

void Pool::set_limits(uint64_t max_bytes, uint64_t max_inodes) {
  limit_.store(max_bytes / kBlockSize, std::memory_order_relaxed);
  max_inodes_.store(max_inodes, std::memory_order_relaxed);
  if (store_) store_->set_limit(max_bytes);
}

void Pool::use_store(std::unique_ptr<Store> s) {
  store_ = std::move(s);
  store_->set_limit(max_bytes());
}

uint64_t Pool::used_blocks() const {
  return store_ ? store_->used_blocks() : used_.load(std::memory_order_relaxed);
}

bool Pool::charge(uint64_t n) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (used + n > limit_.load(std::memory_order_relaxed) || used + n < used) {
      enospc_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
  } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
  return true;
}

BlockPtr Pool::take() {
  if (!charge(1)) return BlockPtr(nullptr, BlockReturn{this});
  Block* b = nullptr;
  {
    std::lock_guard lk(free_mu_);
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    }
  }
  if (b != nullptr) {
    std::memset(b->data, 0, kBlockSize);
  } else {
    b = new (std::nothrow) Block{};
    if (b == nullptr) {
      used_.fetch_sub(1, std::memory_order_relaxed);
      enospc_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return BlockPtr(b, BlockReturn{this});
}

void Pool::give(Block* b) noexcept {
  used_.fetch_sub(1, std::memory_order_relaxed);
  {
    std::lock_guard lk(free_mu_);
    if (free_.size() < kMaxFree) {
      free_.push_back(b);
      return;
    }
  }
  delete b;
}

bool Pool::reserve(uint64_t n) {
  if (n == 0) return true;
  if (!store_) return charge(n);
  if (store_->charge(n)) return true;
  count_enospc();
  return false;
}

void Pool::release(uint64_t n) {
  if (store_)
    store_->uncharge(n);
  else
    used_.fetch_sub(n, std::memory_order_relaxed);
}

bool Pool::take_inode() {
  uint64_t n = inodes_.load(std::memory_order_relaxed);
  do {
    if (n >= max_inodes_.load(std::memory_order_relaxed)) {
      enospc_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
  } while (!inodes_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

void Pool::give_inode() { inodes_.fetch_sub(1, std::memory_order_relaxed); }

size_t Pool::free_blocks() const {
  std::lock_guard lk(free_mu_);
  return free_.size();
}

uint64_t default_max_bytes() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{1} << 30;
  uint64_t half = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
  return half / kBlockSize * kBlockSize;
}

uint64_t default_max_inodes(uint64_t max_bytes) {
  uint64_t n = max_bytes / kBlockSize;
  return n < 1024 ? 1024 : n;
}

}  // namespace efuse::fs::memory

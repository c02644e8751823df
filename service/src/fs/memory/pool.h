// What a memory mount may use: file data in 4 KiB blocks up to `memory.max_bytes`, and up to
// `memory.max_inodes` inodes. Asking beyond either is refused (the request gets ENOSPC) and
// counted. Extended attributes are charged in whole blocks too (xattr_blocks()), so that
// statfs and the limit cover what a user can store.
//
// Freed blocks go back to a small free list (kMaxFree) for the next writer and beyond that
// to the allocator, so a mount that shrinks gives its memory back. Thread-safe.
//
// With a Store (store.h: a private tmpfs, when efused may mount one) the regular files' data
// lives there instead, and the store does the counting: used and reserved blocks are its
// pages, and it enforces max_bytes for every path, FUSE passthrough included. take() is then
// not used; the inode count stays here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace efuse::fs::memory {

inline constexpr size_t kBlockSize = 4096;

struct Block {
  alignas(64) char data[kBlockSize];
};

class Pool;
class Store;

// A memory mount's limits, as configured (`memory:` in mounts.yaml).
struct Limits {
  uint64_t max_bytes = 0;   // 0: default_max_bytes()
  uint64_t max_inodes = 0;  // 0: default_max_inodes(max_bytes)
  bool operator==(const Limits&) const = default;
};

// Gives a block back to its pool when the owning pointer goes.
struct BlockReturn {
  Pool* pool = nullptr;
  void operator()(Block* b) const noexcept;
};
using BlockPtr = std::unique_ptr<Block, BlockReturn>;

// Blocks needed for `bytes` (rounded up).
inline uint64_t blocks_for(uint64_t bytes) { return (bytes + kBlockSize - 1) / kBlockSize; }

class Pool {
 public:
  static constexpr size_t kMaxFree = 256;  // blocks kept for reuse (1 MiB)

  Pool(uint64_t max_bytes, uint64_t max_inodes);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // New limits (config reload). Lowering a limit below what is in use refuses new blocks
  // or inodes until enough are freed; nothing in use is taken away.
  void set_limits(uint64_t max_bytes, uint64_t max_inodes);
  // From now on the data lives in `store` (before any block is used).
  void use_store(std::unique_ptr<Store> s);
  Store* store() const { return store_.get(); }
  // A request refused for want of space elsewhere (a write to the store): counted.
  void count_enospc() { enospc_.fetch_add(1, std::memory_order_relaxed); }

  // A zeroed block; null when the pool is at its limit or memory ran out (ENOSPC, counted).
  BlockPtr take();
  // Charges `n` blocks that hold something else than file data (xattrs); false (and
  // counted) when they do not fit.
  bool reserve(uint64_t n);
  void release(uint64_t n);
  // One more inode; false (and counted) at the limit.
  bool take_inode();
  void give_inode();

  uint64_t used_bytes() const { return used_blocks() * kBlockSize; }
  uint64_t max_bytes() const { return limit_.load(std::memory_order_relaxed) * kBlockSize; }
  uint64_t used_blocks() const;
  uint64_t max_blocks() const { return limit_.load(std::memory_order_relaxed); }
  uint64_t inodes() const { return inodes_.load(std::memory_order_relaxed); }
  uint64_t max_inodes() const { return max_inodes_.load(std::memory_order_relaxed); }
  // Requests refused for want of blocks or inodes.
  uint64_t enospc() const { return enospc_.load(std::memory_order_relaxed); }
  // Blocks on the free list (allocated from the system, holding nothing).
  size_t free_blocks() const;

 private:
  friend struct BlockReturn;
  void give(Block* b) noexcept;
  bool charge(uint64_t n);

  std::atomic<uint64_t> limit_;  // blocks
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> max_inodes_;
  std::atomic<uint64_t> inodes_{0};
  std::atomic<uint64_t> enospc_{0};
  mutable std::mutex free_mu_;
  std::vector<Block*> free_;  // guarded by free_mu_
  std::unique_ptr<Store> store_;
};

// Defaults of a memory mount: half of the machine's RAM for data (as tmpfs), and one inode
// per 4 KiB of that (which is tmpfs's default too: half of RAM's pages).
uint64_t default_max_bytes();
uint64_t default_max_inodes(uint64_t max_bytes);

}  // namespace efuse::fs::memory

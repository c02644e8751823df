// The file handles (fh) a backend gave the kernel, looked up before a handle is used (every
// backend keeps its handles here): a handle the kernel never got (a forged or stale
// request) is EBADF and can never reach, let alone close, an unrelated descriptor of efused.
// The passthrough backend's handles carry their descriptor (fd_of(); see passthrough_fs.h):
// the table decides whether one may be used.
//
// Every OPEN adds a handle and every RELEASE removes one, usually on different queue threads,
// so the table allocates nothing per handle: a handle lives in an open-addressing slot array
// of one of kShards shards, each with its own mutex. (A node-based set freed each handle's
// node on another thread than the one that allocated it, which cost a warm `cat` about 2 µs
// of efused's CPU.) Thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace efuse::fs {

class HandleTable {
 public:
  // Two values are the table's own markers and can never be handles (add() refuses them).
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static constexpr uint64_t kRemoved = ~uint64_t{0} - 1;

  // Adds `fh`; false when it is a marker value or already there.
  bool add(uint64_t fh);
  bool contains(uint64_t fh) const;
  // Removes `fh`; false when it was not there.
  bool remove(uint64_t fh);
  size_t size() const;

 private:
  static constexpr size_t kShards = 16;
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::vector<uint64_t> slots;  // a power of two long, or empty
    size_t live = 0;
    size_t removed = 0;
    // The slot holding `fh`, or the first free slot on its probe path (slots not empty).
    size_t find(uint64_t fh, uint64_t mix, bool* found) const;
    void rehash(size_t capacity);
  };
  static uint64_t mix(uint64_t fh) { return (fh ^ (fh >> 31)) * 0x9e3779b97f4a7c15ULL; }
  Shard& shard(uint64_t m) { return shards_[m >> 60]; }
  const Shard& shard(uint64_t m) const { return shards_[m >> 60]; }
  std::array<Shard, kShards> shards_;
};

}  // namespace efuse::fs

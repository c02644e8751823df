// The file handles (fh) a backend gave the kernel, looked up before a handle is used (every
// backend keeps its handles here): a handle the kernel never got (a forged or stale
// request) is EBADF and can never reach, let alone close, an unrelated descriptor of efused. The passthrough backend's handles
// carry their descriptor (fd_of(); see passthrough_fs.h): the table decides whether one
// may be used. Thread-safe; lookups take a shared lock.
#pragma once

#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <unordered_set>

namespace efuse::fs {

class HandleTable {
 public:
  void add(uint64_t fh) {
    std::unique_lock lk(mu_);
    live_.insert(fh);
  }
  bool contains(uint64_t fh) const {
    std::shared_lock lk(mu_);
    return live_.count(fh) != 0;
  }
  // Removes `fh`; false when it was not there.
  bool remove(uint64_t fh) {
    std::unique_lock lk(mu_);
    return live_.erase(fh) != 0;
  }
  size_t size() const {
    std::shared_lock lk(mu_);
    return live_.size();
  }

 private:
  mutable std::shared_mutex mu_;
  std::unordered_set<uint64_t> live_;
};

}  // namespace efuse::fs

// Where a memory mount keeps its regular files' data when efused may mount file systems
// (root): a private tmpfs instance, made with fsopen/fsmount and never attached to any
// mount namespace, with `size` = memory.max_bytes. Each regular file has one file in it,
// named after its nodeid, created with the inode. Its descriptor is open while the kernel
// has the file open, and is what FUSE passthrough opens use as their backing file: reads,
// writes and mmap go straight to shmem, with no request to efused.
//
// The limit holds for every path because tmpfs enforces it: a write through passthrough,
// an mmap fault, a fallocate or a write through efused that needs a page beyond `size`
// gets ENOSPC (a short write when part fits, SIGBUS for an mmap fault), as on tmpfs.
// Extended attributes are charged to the same instance (a ballast file holding as many
// pages as the xattrs are charged), so one counter covers everything and statfs reports it.
// Attributes of regular files (size, blocks, mtime, ctime) come from the data file itself,
// so they are exact after passthrough writes that efused never saw.
//
// Lowering the limit below what is in use: tmpfs refuses a size below its use, so the
// instance keeps `size` = what is in use (no new page fits) and shrinks to the limit as
// pages are freed (shrink(), called after every change of efused's that frees some).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/result.h"

namespace efuse::fs::memory {

class Store {
 public:
  // The instance, sized to `max_bytes`; null (and *why) when it cannot be made (not root,
  // a kernel without the new mount API, a seccomp filter).
  static std::unique_ptr<Store> create(uint64_t max_bytes, std::string* why);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // The data file of `nodeid`: created empty (EEXIST if it exists), opened (by default
  // O_RDWR, created if missing; close-on-exec always), removed.
  Status make(uint64_t nodeid);
  Result<int> open(uint64_t nodeid, int flags = O_CREAT | O_RDWR);
  void remove(uint64_t nodeid);
  // Its attributes (through `fd` when >= 0, else by name).
  Status stat(uint64_t nodeid, int fd, struct stat* st) const;
  // Its times: mtime (UTIME_OMIT, UTIME_NOW or a time); ctime becomes now.
  Status set_mtime(uint64_t nodeid, int fd, const struct timespec& mtime);

  // st_dev of the data files (the instance's anonymous device).
  dev_t dev() const;
  // Pages in use (data and ballast) and the limit in pages.
  uint64_t used_blocks() const;
  uint64_t limit_blocks() const { return limit_.load(std::memory_order_relaxed); }
  // A new limit (reload); the instance shrinks to it as pages are freed.
  void set_limit(uint64_t max_bytes);
  // After efused freed pages: shrinks the instance towards the limit if it is above it.
  void shrink();
  // Charges `n` more pages to the ballast (xattrs); false when they do not fit (ENOSPC).
  bool charge(uint64_t n);
  void uncharge(uint64_t n);

 private:
  Store(int mnt, int ballast, uint64_t limit_blocks);
  // Sets the instance's size (pages); false when tmpfs refused it (below its use).
  bool resize(uint64_t blocks);

  const int mnt_;      // the detached mount of the instance
  const int ballast_;  // xattr charges, as allocated pages
  std::atomic<uint64_t> limit_;  // pages, as configured
  std::mutex mu_;                // size_ and ballast_blocks_
  uint64_t size_ = 0;            // pages, as the instance is sized now (>= limit_)
  uint64_t ballast_blocks_ = 0;
};

}  // namespace efuse::fs::memory

// Inodes of the passthrough backend: held by O_PATH handles and keyed by the backing
// (st_dev, st_ino), never by path, so renames in the backing tree do not break them.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <atomic>
#include <memory>
#include <vector>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace efuse::fs::passthrough {

struct Inode {
  Inode(int fd_, dev_t dev_, ino_t ino_, mode_t type_, uint64_t nodeid_)
      : fd(fd_), dev(dev_), ino(ino_), type(type_), nodeid(nodeid_) {}
  ~Inode();
  Inode(const Inode&) = delete;
  Inode& operator=(const Inode&) = delete;

  const int fd;  // O_PATH | O_NOFOLLOW handle on the backing object
  const dev_t dev;
  const ino_t ino;
  const mode_t type;  // S_IFMT bits
  const uint64_t nodeid;
  uint64_t nlookup = 0;  // guarded by InodeTable::mu_
  std::atomic<uint32_t> opens{0};  // open files through the mount
  std::atomic<int> watch{-1};      // inotify watch descriptor (directories)

  // How the kernel does I/O for this file while it is open. The kernel refuses (ETXTBSY)
  // passthrough and page-cache opens of one inode at the same time, so the first open
  // decides for all until the last is released.
  std::mutex io_mu;
  uint32_t io_opens = 0;   // guarded by io_mu
  bool io_cached = false;  // guarded by io_mu

  // POSIX record locks: one open file description per lock owner, locked with OFD locks.
  // OFD locks carry no pid, so each owner also keeps the ranges it holds and the pid that
  // took them: F_GETLK reports the conflicting lock's pid, as natively.
  struct LockRange {
    uint64_t start, end;  // inclusive
    uint32_t type;
  };
  struct LockOwner {
    int fd = -1;
    uint32_t pid = 0;
    std::vector<LockRange> ranges;
  };
  std::mutex lock_mu;
  std::unordered_map<uint64_t, LockOwner> lock_fds;
};

class InodeTable {
 public:
  InodeTable() = default;

  // Installs the root (nodeid 1) from an O_PATH fd on the source directory.
  void set_root(int fd, const struct stat& st);
  std::shared_ptr<Inode> get(uint64_t nodeid) const;
  // Finds the inode for (st.st_dev, st.st_ino) or adopts `fd` as a new one; adds one lookup
  // reference either way. Closes `fd` when an inode already existed. *created tells which.
  std::shared_ptr<Inode> ref(int fd, const struct stat& st, bool* created = nullptr);
  // The inode for a backing object, if the kernel knows it (no reference added).
  std::shared_ptr<Inode> find(dev_t dev, ino_t ino) const;
  // Drops `n` lookup references; the inode is forgotten at zero and returned.
  std::shared_ptr<Inode> forget(uint64_t nodeid, uint64_t n);
  // Every inode the kernel knows (for resynchronising after lost change events).
  std::vector<std::shared_ptr<Inode>> all() const;
  size_t size() const;

 private:
  struct Key {
    dev_t dev;
    ino_t ino;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept {
      return std::hash<uint64_t>()(static_cast<uint64_t>(k.ino) * 0x9E3779B97F4A7C15ULL ^
                                   static_cast<uint64_t>(k.dev));
    }
  };

  mutable std::shared_mutex mu_;
  uint64_t next_nodeid_ = 2;  // never reused: a nodeid the kernel saw names one object forever
  std::unordered_map<uint64_t, std::shared_ptr<Inode>> by_id_;
  std::unordered_map<Key, std::shared_ptr<Inode>, KeyHash> by_key_;
};

}  // namespace efuse::fs::passthrough

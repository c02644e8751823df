// Memory backend: open files and their data (read, write, truncate, fallocate, SEEK_DATA
// and SEEK_HOLE) in the block pool.
#include <fcntl.h>
#include <linux/falloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "fs/memory/memory_fs.h"
#include "fs/memory/store.h"

namespace efuse::fs::memory {
namespace {

struct timespec now() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

// Bits a write, truncation or O_TRUNC open by a caller without CAP_FSETID clears
// (FUSE_HANDLE_KILLPRIV_V2 leaves it to the file system).
void kill_privs(Node& node) {
  node.mode &= ~S_ISUID;
  if ((node.mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) node.mode &= ~S_ISGID;
}

constexpr uint64_t kMaxFileSize = uint64_t{1} << 62;

}  // namespace

Status MemoryFs::check_fh(uint64_t, uint64_t fh) const {
  return handles_.contains(fh) ? Status() : Status(Errno{EBADF});
}

void MemoryFs::truncate(Node& node, uint64_t size) {
  uint64_t keep = blocks_for(size);
  node.blocks.erase(node.blocks.lower_bound(keep), node.blocks.end());
  if (size % kBlockSize != 0) {
    auto last = node.blocks.find(size / kBlockSize);
    if (last != node.blocks.end())
      std::memset(last->second->data + size % kBlockSize, 0, kBlockSize - size % kBlockSize);
  }
  node.size = size;
}

Status MemoryFs::allocate(Node& node, uint64_t off, uint64_t len) {
  std::vector<uint64_t> added;
  for (uint64_t i = off / kBlockSize, end = blocks_for(off + len); i < end; ++i) {
    if (node.blocks.count(i)) continue;
    BlockPtr b = pool_.take();
    if (!b) {
      for (uint64_t a : added) node.blocks.erase(a);  // all or nothing, as tmpfs
      return Errno{ENOSPC};
    }
    node.blocks.emplace(i, std::move(b));
    added.push_back(i);
  }
  return {};
}

void MemoryFs::punch(Node& node, uint64_t off, uint64_t len) {
  uint64_t end = off + len;
  auto it = node.blocks.lower_bound(off / kBlockSize);
  while (it != node.blocks.end() && it->first * kBlockSize < end) {
    uint64_t start = it->first * kBlockSize;
    uint64_t from = std::max(start, off), to = std::min(start + kBlockSize, end);
    if (from == start && to == start + kBlockSize) {
      it = node.blocks.erase(it);
      continue;
    }
    std::memset(it->second->data + (from - start), 0, to - from);
    ++it;
  }
}

Status MemoryFs::truncate_data(Node& node, uint64_t size) {
  bool close_after = false;
  auto fd = data_fd(node, &close_after);
  if (!fd.ok()) return Errno{fd.error()};
  struct stat st {};
  int rc = fstat(*fd, &st);
  if (rc == 0 && static_cast<uint64_t>(st.st_size) != size) rc = ftruncate(*fd, static_cast<off_t>(size));
  Status s = rc == 0 ? Status() : Status(Errno{errno});
  if (close_after) ::close(*fd);
  if (size < static_cast<uint64_t>(st.st_size)) pool_.store()->shrink();
  return s;
}

Result<int> MemoryFs::data_fd(Node& node, bool* close_after) {
  *close_after = node.fd < 0;
  if (node.fd >= 0) return node.fd;
  return pool_.store()->open(node.nodeid);
}

void MemoryFs::drop_data(Node& node) {
  if (Store* store = pool_.store()) {
    // Its attributes stay what the data file says now: a descriptor that outlived the
    // names (the kernel's O_PATH one, a data file libefuse_intercept.so reads) shows them.
    struct stat data {};
    if (store->stat(node.nodeid, node.fd, &data).ok()) {
      node.size = static_cast<uint64_t>(data.st_size);
      node.mtime = data.st_mtim;
      node.data_blocks = data.st_blocks;
      if (data.st_ctim.tv_sec > node.ctime.tv_sec ||
          (data.st_ctim.tv_sec == node.ctime.tv_sec && data.st_ctim.tv_nsec > node.ctime.tv_nsec))
        node.ctime = data.st_ctim;
    }
    store->remove(node.nodeid);  // the kernel may hold it a little longer (an mmap)
  } else {
    truncate(node, 0);
  }
}

namespace {

// Set-user-ID, or set-group-ID with group execute: what a write clears.
bool has_privs(mode_t mode) {
  return (mode & S_ISUID) || (mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
}

// Handles of opens served through efused are odd, passthrough ones even.
constexpr uint64_t kCachedFh = 1;

}  // namespace

Result<OpenInfo> MemoryFs::open_node(const Context& ctx, Node& node, int flags) {
  Store* store = S_ISREG(node.mode) ? pool_.store() : nullptr;
  if (store != nullptr && node.fd < 0) {
    auto fd = store->open(node.nodeid);
    if (!fd.ok()) return Errno{fd.error() == EMFILE ? ENFILE : fd.error()};
    node.fd = *fd;
  }
  if ((flags & O_TRUNC) && S_ISREG(node.mode)) {
    if (store != nullptr) {
      if (ftruncate(node.fd, 0) != 0) {
        Errno e = last_errno();
        if (node.opens == 0) {
          ::close(node.fd);
          node.fd = -1;
        }
        return e;
      }
      store->shrink();
    } else {
      truncate(node, 0);
      node.mtime = now();
    }
    node.ctime = now();
    if (ctx.kill_suidgid) kill_privs(node);
  }
  OpenInfo info;
  // Every change goes through the kernel, so its page cache is never stale: keep it.
  info.keep_cache = true;
  bool cached = true;
  if (store != nullptr && passthrough_.load() && passthrough_io_.load() && !node.no_passthrough &&
      node.cached_opens == 0) {
    const bool writes = (flags & O_ACCMODE) != O_RDONLY;
    const bool unprivileged = ctx.uid != 0;  // root is taken to have CAP_FSETID
    if (writes && unprivileged && has_privs(node.mode)) {
      // The kernel's passthrough writes do not clear set-ID bits: serve the first such open
      // through efused, whose WRITE clears them; once passthrough opens exist (the kernel
      // mixes no other kind with them) clear them now, as the first write would.
      if (node.opens == node.cached_opens) {
        cached = true;
      } else {
        kill_privs(node);
        node.ctime = now();
        cached = false;
      }
    } else {
      cached = false;
    }
  }
  info.fh = (next_fh_.fetch_add(1, std::memory_order_relaxed) << 1) | (cached ? kCachedFh : 0);
  if (store != nullptr && !cached) {
    info.passthrough_fd = node.fd;
    node.passthrough_seen = true;
  }
  // Pages the kernel cached for an open served through efused are stale once a passthrough
  // open (which bypasses them) may have written.
  if (node.passthrough_seen) info.keep_cache = false;
  if (store != nullptr && cached) ++node.cached_opens;
  ++node.opens;
  handles_.add(info.fh);
  return info;
}

Result<OpenInfo> MemoryFs::open(const Context& ctx, uint64_t ino, int flags) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  if (node->is_dir() && (flags & O_ACCMODE) != O_RDONLY) return Errno{EISDIR};
  std::unique_lock nl(node->mu);
  return open_node(ctx, *node, flags);
}

Result<Created> MemoryFs::create(const Context& ctx, uint64_t parent, std::string_view name,
                                 mode_t mode, int flags) {
  std::unique_lock lk(mu_);
  NodePtr dir = get(parent);
  if (!dir) return Errno{ESTALE};
  NodePtr node;
  if (dir->is_dir()) {
    if (auto it = dir->names.find(name); it != dir->names.end()) {
      // Created meanwhile by someone else: open(2) with O_CREAT opens it unless O_EXCL.
      if (flags & O_EXCL) return Errno{EEXIST};
      node = get(it->second.nodeid);
      if (!node) return Errno{EIO};
      if (node->is_dir()) return Errno{EISDIR};
    }
  }
  bool made = false;
  if (!node) {
    auto fresh = make_node(ctx, *dir, name, S_IFREG | (mode & 07777));
    if (!fresh.ok()) return Errno{fresh.error()};
    node = *fresh;
    made = true;
  }
  std::unique_lock nl(node->mu);
  auto opened = open_node(ctx, *node, made ? (flags & ~O_TRUNC) : flags);
  if (!opened.ok()) {
    if (made) drop_data(*node);
    return Errno{opened.error()};
  }
  if (made) {
    nodes_.insert(node->nodeid, node, 0);
    add_name(*dir, name, *node);
  }
  Created c;
  c.entry = entry_of(*node);
  c.open = *opened;
  return c;
}

Result<size_t> MemoryFs::read(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                              std::span<char> buf) {
  std::shared_lock lk(mu_);
  if (!check_fh(ino, fh).ok()) return Errno{EBADF};
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  if (node->is_dir()) return Errno{EISDIR};
  if (node->fd >= 0) {
    ssize_t n = pread(node->fd, buf.data(), buf.size(), static_cast<off_t>(off));
    if (n < 0) return last_errno();
    return static_cast<size_t>(n);
  }
  if (off >= node->size) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), node->size - off));
  size_t done = 0;
  auto it = node->blocks.lower_bound(off / kBlockSize);
  while (done < n) {
    uint64_t pos = off + done;
    uint64_t index = pos / kBlockSize;
    size_t in = pos % kBlockSize;
    size_t chunk = std::min<size_t>(kBlockSize - in, n - done);
    while (it != node->blocks.end() && it->first < index) ++it;
    if (it != node->blocks.end() && it->first == index)
      std::memcpy(buf.data() + done, it->second->data + in, chunk);
    else
      std::memset(buf.data() + done, 0, chunk);  // a hole
    done += chunk;
  }
  return n;
}

Result<size_t> MemoryFs::write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t off,
                               std::span<const char> data) {
  std::shared_lock lk(mu_);
  if (!check_fh(ino, fh).ok()) return Errno{EBADF};
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::unique_lock nl(node->mu);
  if (!S_ISREG(node->mode)) return Errno{EINVAL};
  if (off >= kMaxFileSize || data.size() > kMaxFileSize - off) return Errno{EFBIG};
  if (node->fd >= 0) {
    // The store's tmpfs enforces the limit: a short write, or ENOSPC when nothing fit. It
    // sets the data file's mtime and ctime.
    ssize_t n = pwrite(node->fd, data.data(), data.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == ENOSPC) pool_.count_enospc();
      return last_errno();
    }
    if (ctx.kill_suidgid && n > 0) {
      kill_privs(*node);
      node->ctime = now();
    }
    return static_cast<size_t>(n);
  }
  size_t done = 0;
  while (done < data.size()) {
    uint64_t pos = off + done;
    uint64_t index = pos / kBlockSize;
    size_t in = pos % kBlockSize;
    size_t chunk = std::min<size_t>(kBlockSize - in, data.size() - done);
    auto it = node->blocks.find(index);
    if (it == node->blocks.end()) {
      BlockPtr b = pool_.take();
      if (!b) break;  // the pool is full: a short write, or ENOSPC if nothing was written
      it = node->blocks.emplace(index, std::move(b)).first;
    }
    std::memcpy(it->second->data + in, data.data() + done, chunk);
    done += chunk;
  }
  if (done == 0 && !data.empty()) return Errno{ENOSPC};
  node->size = std::max<uint64_t>(node->size, off + done);
  node->mtime = node->ctime = now();
  if (ctx.kill_suidgid) kill_privs(*node);
  return done;
}

Status MemoryFs::flush(const Context&, uint64_t ino, uint64_t fh, uint64_t) {
  return check_fh(ino, fh);
}

Status MemoryFs::release(const Context&, uint64_t ino, uint64_t fh) {
  if (!handles_.remove(fh)) return Errno{EBADF};
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return {};
  std::unique_lock nl(node->mu);
  if ((fh & kCachedFh) && node->cached_opens > 0) --node->cached_opens;
  if (node->opens == 0 || --node->opens != 0) return {};
  if (node->fd >= 0) {
    ::close(node->fd);
    node->fd = -1;
  }
  // The last handle of an unlinked file: its blocks go back to the pool now.
  if (node->nlink == 0 && S_ISREG(node->mode)) drop_data(*node);
  return {};
}

Status MemoryFs::fsync(const Context&, uint64_t ino, uint64_t fh, bool) {
  return check_fh(ino, fh);  // nothing to write back: the data is where it lives
}

Status MemoryFs::fallocate(const Context&, uint64_t ino, uint64_t fh, int mode, uint64_t off,
                           uint64_t len) {
  if (len == 0) return Errno{EINVAL};
  if (off >= kMaxFileSize || len > kMaxFileSize - off) return Errno{EFBIG};
  const int known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  if (mode & ~known) return Errno{EOPNOTSUPP};  // collapse and insert range
  if ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)) return Errno{EOPNOTSUPP};
  if ((mode & FALLOC_FL_PUNCH_HOLE) && (mode & FALLOC_FL_ZERO_RANGE)) return Errno{EOPNOTSUPP};
  std::shared_lock lk(mu_);
  if (!check_fh(ino, fh).ok()) return Errno{EBADF};
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::unique_lock nl(node->mu);
  if (!S_ISREG(node->mode)) return Errno{ENODEV};
  if (node->fd >= 0) {
    // tmpfs has no ZERO_RANGE: a hole punched, then allocated. It sets the data file's times.
    const off_t o = static_cast<off_t>(off), l = static_cast<off_t>(len);
    int rc = 0;
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
      rc = ::fallocate(node->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, l);
    if (rc == 0 && !(mode & FALLOC_FL_PUNCH_HOLE))
      rc = ::fallocate(node->fd, mode & FALLOC_FL_KEEP_SIZE, o, l);
    if (rc != 0) {
      if (errno == ENOSPC) pool_.count_enospc();
      return last_errno();
    }
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) pool_.store()->shrink();
    return {};
  }
  struct timespec t = now();
  if (mode & FALLOC_FL_PUNCH_HOLE) {
    if (off < node->size) punch(*node, off, std::min(len, node->size - off));
    node->mtime = node->ctime = t;
    return {};
  }
  if (mode & FALLOC_FL_ZERO_RANGE) punch(*node, off, len);
  Status s = allocate(*node, off, len);
  if (!s.ok()) return s;
  if (!(mode & FALLOC_FL_KEEP_SIZE) && off + len > node->size) {
    node->size = off + len;
    node->mtime = t;
  }
  if (mode & FALLOC_FL_ZERO_RANGE) node->mtime = t;
  node->ctime = t;
  return {};
}

Result<uint64_t> MemoryFs::lseek(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                                 int whence) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return Errno{EINVAL};
  std::shared_lock lk(mu_);
  if (!check_fh(ino, fh).ok()) return Errno{EBADF};
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  if (node->fd >= 0) {
    off_t at = ::lseek(node->fd, static_cast<off_t>(off), whence);
    if (at < 0) return last_errno();
    return static_cast<uint64_t>(at);
  }
  if (off >= node->size) return Errno{ENXIO};
  uint64_t index = off / kBlockSize;
  auto it = node->blocks.lower_bound(index);
  if (whence == SEEK_DATA) {
    if (it == node->blocks.end()) return Errno{ENXIO};
    uint64_t at = std::max(off, it->first * kBlockSize);
    if (at >= node->size) return Errno{ENXIO};
    return at;
  }
  // SEEK_HOLE: the first block at or after `off` that is not allocated; the end of the file
  // is a hole too.
  while (it != node->blocks.end() && it->first == index) {
    ++index;
    ++it;
  }
  return std::min(std::max(off, index * kBlockSize), node->size);
}

}  // namespace efuse::fs::memory

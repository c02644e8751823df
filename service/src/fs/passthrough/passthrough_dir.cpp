// Passthrough backend: directory handles and readdir / readdirplus.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {

struct PassthroughFs::DirHandle {
  explicit DirHandle(DIR* d) : dp(d) {}
  ~DirHandle() { closedir(dp); }
  DirHandle(const DirHandle&) = delete;
  DirHandle& operator=(const DirHandle&) = delete;

  std::mutex mu;
  DIR* dp;
  uint64_t offset = 0;          // position the next readdir continues from
  struct dirent* pending = nullptr;  // read but not yet delivered (did not fit)
};

std::shared_ptr<PassthroughFs::DirHandle> PassthroughFs::dir_handle(uint64_t fh) {
  std::lock_guard lk(dirs_mu_);
  auto it = dirs_.find(fh);
  return it == dirs_.end() ? nullptr : it->second;
}

Result<OpenInfo> PassthroughFs::opendir(const Context&, uint64_t ino, int) {
  GET_INODE(inode, ino);
  PIN_FD(path_fd, inode);
  int fd = openat(path_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return last_errno();
  DIR* dp = fdopendir(fd);
  if (dp == nullptr) {
    Errno e = last_errno();
    ::close(fd);
    return e;
  }
  auto handle = std::make_shared<DirHandle>(dp);
  OpenInfo info;
  // No FOPEN_CACHE_DIR: with it, listings read while other tasks create, rename and unlink
  // in the same directory through the mount came back stale (test_concurrent_dirops). The
  // kernel (fs/fuse/readdir.c) stamps an empty cache with the directory's i_version when a
  // reader starts at offset 0, and adds whatever READDIR replies arrive while the cache's
  // reset counter is unchanged: a reply built before a create, added after a second reader
  // stamped the empty cache with the post-create version, leaves a cache that misses the
  // entry and still looks current. Nothing the server does closes that window.
  std::lock_guard lk(dirs_mu_);
  info.fh = next_dir_fh_++;
  dirs_[info.fh] = std::move(handle);
  return info;
}

static bool is_dot_or_dotdot(const char* n) {
  return n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'));
}

// A READDIRPLUS entry without a nodeid: the kernel emits the name and links nothing.
static Entry bare_entry(ino_t ino, mode_t type) {
  Entry e;
  e.attr.st_ino = ino;
  e.attr.st_mode = type;
  return e;
}

Status PassthroughFs::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                              DirSink& sink) {
  auto dh = dir_handle(fh);
  if (!dh) return Errno{EBADF};
  auto dir = inodes_.get(ino);
  if (!dir) return Errno{ESTALE};
  int64_t fresh_since = sink.plus() ? fresh_since_ns() : 0;
  std::lock_guard lk(dh->mu);
  if (off != dh->offset) {
    seekdir(dh->dp, static_cast<long>(off));
    dh->offset = off;
    dh->pending = nullptr;
  }
  for (;;) {
    if (dh->pending == nullptr) {
      errno = 0;
      dh->pending = ::readdir(dh->dp);
      if (dh->pending == nullptr) {
        if (errno != 0) return last_errno();
        break;  // end of directory
      }
    }
    const struct dirent* d = dh->pending;
    std::string_view name(d->d_name);
    uint64_t next = static_cast<uint64_t>(d->d_off);
    if (!sink.fits(name)) break;
    if (!sink.plus()) {
      sink.add(name, d->d_ino, d->d_type, next);
    } else if (is_dot_or_dotdot(d->d_name)) {
      // No nodeid for "." and "..": the kernel neither links nor counts them.
      sink.add_plus(name, bare_entry(d->d_ino, static_cast<mode_t>(DTTOIF(d->d_type))), next);
    } else if (auto known = inodes_.find(dir->dev, d->d_ino);
               known && !S_ISDIR(known->type) &&
               known->refreshed_ns.load(std::memory_order_relaxed) > fresh_since) {
      // The kernel got this inode's entry and attributes recently (a warm tree: find, ls,
      // du again) and invalidation keeps them exact: a bare entry (nodeid 0) gives it the
      // name without the lookup that would only refresh them. Saves an openat, two stats
      // and a close per entry; past half the timeouts the full entry goes out again, so
      // that repeated listings keep a tree's dentries and attributes valid in bulk. The
      // kernel looks a name up itself if it has no dentry for it (another hard link, a
      // reused inode number). Directories always get full entries: reading a directory
      // invalidates its atime, and the refresh from its parent's listing saves the
      // GETATTR that the walker's next fstat would cost.
      sink.add_plus(name, bare_entry(d->d_ino, known->type), next);
    } else {
      auto e = lookup_at(dirfd(dh->dp), d->d_name);
      if (!e.ok()) {
        if (e.error() != ENOENT) return Errno{e.error()};
        // Removed since we read the entry: skip it.
      } else {
        sink.add_plus(name, *e, next);  // fits() was checked: cannot fail
      }
    }
    dh->pending = nullptr;
    dh->offset = next;
  }
  return {};
}

Status PassthroughFs::releasedir(const Context&, uint64_t, uint64_t fh) {
  std::shared_ptr<DirHandle> dh;
  {
    std::lock_guard lk(dirs_mu_);
    auto it = dirs_.find(fh);
    if (it == dirs_.end()) return Errno{EBADF};
    dh = std::move(it->second);
    dirs_.erase(it);
  }
  return {};
}

Status PassthroughFs::fsyncdir(const Context&, uint64_t, uint64_t fh, bool datasync) {
  auto dh = dir_handle(fh);
  if (!dh) return Errno{EBADF};
  int fd = dirfd(dh->dp);
  return check(datasync ? fdatasync(fd) : ::fsync(fd));
}

}  // namespace efuse::fs::passthrough

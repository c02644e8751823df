// Passthrough backend: directory handles and readdir / readdirplus.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {

// Listings and the kernel's readdir cache
// ----------------------------------------
// With FOPEN_CACHE_DIR the kernel keeps a directory's listing in the directory's page cache
// and serves getdents from it, so a warm walk costs OPENDIR and RELEASEDIR per directory
// instead of also READDIRPLUS and READDIR. The cache is built from the READDIR replies of
// whichever reader happens to be at its end, and it is complete when a reader gets the empty
// reply at the end of the directory. The kernel (fs/fuse/readdir.c) stamps an empty cache
// with the directory's i_version when a reader starts at offset 0, and drops a complete cache
// whose stamp no longer matches: a change through the mount (fuse_dir_changed) or our
// notify_inval_entry bumps i_version.
//
// That check has a hole. A reply built before a change can still be on its way to the
// cache (added when its reader runs again) after the change bumped i_version, and a second
// reader starting on the still-empty cache then stamps it with the post-change version: the
// cache misses the change and looks current. Without the counting below,
// test_concurrent_dirops hits this within seconds.
//
// So efused keeps count. Handles that have asked efused for entries are counted
// (Inode::listings, from their first READDIR until released: a handle served from the
// kernel's cache has no reply on its way), and a change to the directory's entries while
// any is counted (ours, after it is made; or an outside one the watcher reports) is counted
// too (Inode::changed). Before the empty reply that would complete a cache, and when the
// last counted handle is released, a directory with changes not yet settled gets its
// cached pages dropped (notify_inval_inode): a cache missing a page is reset the next time
// it is read. The drop settles the changes (Inode::settled) when no other handle is
// counted, since nothing older can reach the cache after it. Changes while none is counted
// are left to the kernel's i_version check (ours) and to the watcher (outside changes: it
// drops the pages itself). Listings are cached only while invalidation is exact (every
// directory watched), and for at most the entry timeout: an opendir later than that after
// the listing was read (Inode::listed_ns) comes without FOPEN_KEEP_CACHE, and the kernel
// drops the cache and lists again. Like cached names, a cached listing then never outlives
// the timeout an operator set for changes inotify cannot see (a network file system
// changed from another host).
//
// What remains is narrower than a scheduling delay: a reader descheduled between getting
// its final (empty) reply and parsing it, for as long as a change, a reset of the cache and
// another reader's refill up to the same position take, would mark that refill complete
// early; the drop at the refilling reader's own end or at the last release removes it.

struct PassthroughFs::DirHandle {
  DirHandle(std::shared_ptr<Inode> i, bool cache) : dir(std::move(i)), cache_dir(cache) {}
  ~DirHandle() {
    if (dp != nullptr) closedir(dp);
  }
  DirHandle(const DirHandle&) = delete;
  DirHandle& operator=(const DirHandle&) = delete;

  // The backing directory stream, opened by the first READDIR or FSYNCDIR: a listing the
  // kernel has cached needs none, so OPENDIR and RELEASEDIR cost no system call. With mu
  // held.
  Status open_stream() {
    if (dp != nullptr) return {};
    PathFd path_fd = dir->pin();
    if (!path_fd.ok()) return path_fd.error();
    int fd = openat(path_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return last_errno();
    dp = fdopendir(fd);
    if (dp == nullptr) {
      Errno e = last_errno();
      ::close(fd);
      return e;
    }
    return {};
  }

  std::mutex mu;
  DIR* dp = nullptr;                 // guarded by mu
  const std::shared_ptr<Inode> dir;
  const bool cache_dir;              // the kernel may cache what this handle lists
  bool counted = false;              // in dir->listings (from its first READDIR); under mu
  uint64_t offset = 0;          // position the next readdir continues from
  struct dirent* pending = nullptr;  // read but not yet delivered (did not fit)
};

std::shared_ptr<PassthroughFs::DirHandle> PassthroughFs::dir_handle(uint64_t fh) {
  std::lock_guard lk(dirs_mu_);
  auto it = dirs_.find(fh);
  return it == dirs_.end() ? nullptr : it->second;
}

bool PassthroughFs::cache_listings() const {
  return inv_.load() != nullptr && exact_invalidation();
}

void PassthroughFs::drop_raced_listing(Inode& dir, bool alone) {
  uint64_t changed = dir.changed.load();
  if (changed == dir.settled.load()) return;
  Invalidator* inv = inv_.load();
  if (inv == nullptr) return;
  // Safe from a request handler: dropping a directory's pages takes no lock a pending
  // READDIR or RELEASEDIR holds (unlike inval_entry, which takes the directory's i_rwsem).
  inv->inval_inode(dir.nodeid, true);
  listing_drops_.fetch_add(1, std::memory_order_relaxed);
  // A change after the load above keeps the directory unsettled: `changed` moved on.
  if (alone) dir.settled.store(changed);
}

Result<OpenInfo> PassthroughFs::opendir(const Context&, uint64_t ino, int) {
  GET_INODE(inode, ino);
  if (!S_ISDIR(inode->type)) return Errno{ENOTDIR};
  OpenInfo info;
  info.cache_dir = cache_listings();
  if (info.cache_dir) {
    // Without FOPEN_KEEP_CACHE the kernel drops the cached listing at this opendir. While
    // invalidation is exact the entry timeout is the configured one (no cap applies).
    double valid = entry_timeout_.load(std::memory_order_relaxed);
    int64_t age_ns = steady_ns() - inode->listed_ns.load(std::memory_order_relaxed);
    info.keep_cache = age_ns < static_cast<int64_t>(valid * 1e9);
  }
  auto handle = std::make_shared<DirHandle>(inode, info.cache_dir);
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
  if (dh->dir->nodeid != ino) return Errno{ESTALE};  // not the directory fh was opened on
  const auto& dir = dh->dir;
  int64_t fresh_since = sink.plus() ? fresh_since_ns() : 0;
  bool empty = true;  // nothing added to this reply
  std::lock_guard lk(dh->mu);
  if (!dh->counted) {
    // Before the directory is read, so a change that the listing misses sees the count.
    dh->counted = true;
    dir->listings.fetch_add(1);
  }
  if (Status s = dh->open_stream(); !s.ok()) return s;
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
      empty = false;
    } else if (is_dot_or_dotdot(d->d_name)) {
      // No nodeid for "." and "..": the kernel neither links nor counts them.
      sink.add_plus(name, bare_entry(d->d_ino, static_cast<mode_t>(DTTOIF(d->d_type))), next);
      empty = false;
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
      empty = false;
    } else {
      auto e = lookup_at(dirfd(dh->dp), d->d_name);
      if (!e.ok()) {
        if (e.error() != ENOENT) return Errno{e.error()};
        // Removed since we read the entry: skip it.
      } else {
        sink.add_plus(name, *e, next);  // fits() was checked: cannot fail
        empty = false;
      }
    }
    dh->pending = nullptr;
    dh->offset = next;
  }
  // An empty reply completes the kernel's cache of the listing (when this handle's entries
  // were the ones added): drop it instead if a change may have raced the replies in it.
  // This handle's own replies have all arrived (it asks again only after parsing the last).
  if (empty && dh->pending == nullptr && dh->cache_dir) {
    dir->listed_ns.store(steady_ns(), std::memory_order_relaxed);
    drop_raced_listing(*dir, dir->listings.load() == 1);
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
  // RELEASEDIR comes after the handle's last getdents returned: its replies are all added.
  std::lock_guard lk(dh->mu);
  if (dh->counted && dh->dir->listings.fetch_sub(1) == 1) drop_raced_listing(*dh->dir, true);
  return {};
}

Status PassthroughFs::fsyncdir(const Context&, uint64_t, uint64_t fh, bool datasync) {
  auto dh = dir_handle(fh);
  if (!dh) return Errno{EBADF};
  std::lock_guard lk(dh->mu);
  if (Status s = dh->open_stream(); !s.ok()) return s;
  int fd = dirfd(dh->dp);
  return check(datasync ? fdatasync(fd) : ::fsync(fd));
}

}  // namespace efuse::fs::passthrough

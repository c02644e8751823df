// Passthrough backend: directory handles and readdir / readdirplus.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {

// Listings and the kernel's readdir cache
// ----------------------------------------
// While invalidation is exact (every directory the kernel knows is watched), efused answers
// the first OPENDIR with ENOSYS. The kernel then sends no OPENDIR or RELEASEDIR on this
// connection again, and opens every directory with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE and
// handle 0 (fs/fuse/file.c, "Default for no-open"): its readdir cache, in the directory's
// page cache, serves getdents, so a warm walk (find, ls -R, du) costs no upcall at all. Each
// directory open through efused would cost a round trip of two context switches (~25-35 µs
// on the bench machine, most of a warm find's gap to native). READDIR and FSYNCDIR then
// come with handle 0 and read a backing stream opened for the request. Before the first
// OPENDIR, or when invalidation is not exact at that point, directory opens get handles
// and no caching, as before.
//
// The cache is built from the READDIR replies of whichever reader is at its end, and is
// complete when a reader gets the empty reply at the end of the directory
// (fs/fuse/readdir.c). The kernel stamps an empty cache with the directory's i_version and
// mtime when a reader starts at offset 0, and drops a complete cache whose stamp no longer
// matches at the next listing: a change through the mount (fuse_dir_changed) bumps
// i_version; with FUSE_AUTO_INVAL_DATA a listing that starts after the directory's
// attributes expired refreshes them first, and a changed mtime resets the cache, which
// bounds what inotify cannot see (a network file system changed from another host) by
// `cache.attr_timeout`. An outside change that inotify reports invalidates the directory's
// attributes and marks its listing stale (Inode::listing_stale); the pages are dropped
// (a cache missing a page is reset when next read) before the kernel gets the directory's
// attributes again (replied(): GETATTR, LOOKUP, READDIRPLUS of the parent), which it must
// before it lists again. Not at once: a drop that hits a listing half way into the cache
// leaves the kernel unable to complete it (the next entry's page is gone) and unable to
// reset it (only a complete cache is reset), so the directory would be listed through
// efused for as long as the kernel keeps the inode.
//
// That check has a hole. A reply built before a change can still be on its way into the
// cache (added when its reader runs again) after the change bumped i_version, and a second
// reader starting on the still-empty cache stamps it with the post-change version: the
// cache misses the change and looks current. test_concurrent_dirops hits this within
// seconds when nothing is done about it.
//
// So efused counts every change to a directory's entries (Inode::changed: ours, after it is
// made, and outside ones the watcher reports) and when the latest happened. Before the empty
// reply that would complete a cache, a directory with changes not yet settled gets its
// cached pages dropped (notify_inval_inode; a handler may send it, it takes no lock a
// reader holds): whatever the cache holds is then reset at its next use. The drop settles
// the changes (Inode::settled) once the latest is older than kListingGraceNs (2 s): every reply
// built before it has been added to the cache by then, and the drop removed it. Until then
// each completed listing is dropped again, so a directory that keeps changing is listed
// through efused. With directory handles (the design before) the settling point was the
// last RELEASEDIR; without them the grace is what remains: a reader that stalls longer than
// that between receiving a reply and parsing it (in the kernel, right after the wake-up)
// while the directory changes and another reader refills the cache could still leave a
// stale listing, as a stall at the same point could with handles. While invalidation is not
// exact, every cache is dropped before it completes: listings come from the backing tree.

struct PassthroughFs::DirHandle {
  explicit DirHandle(std::shared_ptr<Inode> i) : dir(std::move(i)) {}
  ~DirHandle() {
    if (dp != nullptr) closedir(dp);
  }
  DirHandle(const DirHandle&) = delete;
  DirHandle& operator=(const DirHandle&) = delete;

  // The backing directory stream, opened by the first READDIR or FSYNCDIR: OPENDIR and
  // RELEASEDIR cost no system call. With mu held.
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
  uint64_t offset = 0;               // position the next readdir continues from
  struct dirent* pending = nullptr;  // read but not yet delivered (did not fit)
};

// The handle a directory request names: an open one, or for handle 0 (no OPENDIR, see
// above) one for this request only.
Result<std::shared_ptr<PassthroughFs::DirHandle>> PassthroughFs::dir_handle(uint64_t ino,
                                                                           uint64_t fh) {
  if (fh == 0 && no_opendir_.load()) {
    GET_INODE(inode, ino);
    if (!S_ISDIR(inode->type)) return Errno{ENOTDIR};
    return std::make_shared<DirHandle>(std::move(inode));
  }
  std::lock_guard lk(dirs_mu_);
  auto it = dirs_.find(fh);
  if (it == dirs_.end()) return Errno{EBADF};
  if (it->second->dir->nodeid != ino) return Errno{ESTALE};  // not the directory fh was opened on
  return it->second;
}

bool PassthroughFs::cache_listings() const {
  return inv_.load() != nullptr && exact_invalidation();
}

// The kernel module tier marks a directory mkdir() made complete (fuse/kernel_answers.h):
// its watch is placed when the directory's entry is made (entry_for), after the mkdir, so
// whatever came in between is found here, and whatever comes later the watcher reports.
bool PassthroughFs::new_dir_complete(uint64_t ino) {
  if (!cache_listings()) return false;
  auto dir = inodes_.get(ino);
  if (!dir || !S_ISDIR(dir->type) || dir->watch.load() < 0) return false;
  PathFd path_fd = dir->pin();
  if (!path_fd.ok()) return false;
  int fd = openat(path_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  DIR* dp = fdopendir(fd);
  if (dp == nullptr) {
    ::close(fd);
    return false;
  }
  bool empty = true;
  errno = 0;
  while (struct dirent* d = ::readdir(dp)) {
    if (std::strcmp(d->d_name, ".") != 0 && std::strcmp(d->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  if (errno != 0) empty = false;
  closedir(dp);
  return empty;
}

void PassthroughFs::drop_listing(Inode& dir) {
  Invalidator* inv = inv_.load();
  if (inv == nullptr) return;
  dir.listing_stale.store(false);
  // Safe from a request handler: dropping a directory's pages takes no lock a pending
  // READDIR, LOOKUP or GETATTR holds (unlike inval_entry, which takes the directory's i_rwsem).
  (void)inv->inval_listing(dir.nodeid);  // a failure is the session's to log and count
  listing_drops_.fetch_add(1, std::memory_order_relaxed);
}

void PassthroughFs::replied(Inode& inode, const struct stat& st) {
  if (S_ISDIR(st.st_mode) && inode.listing_stale.load() && inode.listing_stale.exchange(false))
    drop_listing(inode);
  inodes_.replied(inode, st);
}

void PassthroughFs::end_of_listing(Inode& dir) {
  if (inv_.load() == nullptr) return;
  dir.end_of_listing(exact_invalidation(), listing_grace_ns_.load(), [&] { drop_listing(dir); });
}

Result<OpenInfo> PassthroughFs::opendir(const Context&, uint64_t ino, int) {
  GET_INODE(inode, ino);
  if (!S_ISDIR(inode->type)) return Errno{ENOTDIR};
  if (no_opendir_.load()) return Errno{ENOSYS};  // an OPENDIR sent before the kernel knew
  if (cache_listings()) {
    // From now on the kernel opens directories itself, cached (see above).
    if (!no_opendir_.exchange(true))
      LOG_INFO("%s: directory listings cached by the kernel; no OPENDIR/RELEASEDIR from now on",
               source_.c_str());
    return Errno{ENOSYS};
  }
  OpenInfo info;  // not cached: invalidation is not exact (yet)
  auto handle = std::make_shared<DirHandle>(inode);
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
  auto h = dir_handle(ino, fh);
  if (!h.ok()) return Errno{h.error()};
  const auto& dh = *h;
  const auto& dir = dh->dir;
  int64_t fresh_since = sink.plus() ? fresh_since_ns() : 0;
  bool empty = true;  // nothing added to this reply
  std::lock_guard lk(dh->mu);
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
  // An empty reply completes the kernel's cache of the listing (when the replies before it
  // were added): drop it instead if a change may have raced them. Only handle-0 readers
  // fill the cache (directories opened with a handle are not cached).
  if (empty && dh->pending == nullptr && fh == 0) end_of_listing(*dir);
  return {};
}

Status PassthroughFs::releasedir(const Context&, uint64_t, uint64_t fh) {
  std::lock_guard lk(dirs_mu_);
  return dirs_.erase(fh) == 1 ? Status{} : Status{Errno{EBADF}};
}

Status PassthroughFs::fsyncdir(const Context&, uint64_t ino, uint64_t fh, bool datasync) {
  auto h = dir_handle(ino, fh);
  if (!h.ok()) return Errno{h.error()};
  const auto& dh = *h;
  std::lock_guard lk(dh->mu);
  if (Status s = dh->open_stream(); !s.ok()) return s;
  int fd = dirfd(dh->dp);
  return check(datasync ? fdatasync(fd) : ::fsync(fd));
}

}  // namespace efuse::fs::passthrough

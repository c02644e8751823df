// Memory backend: directory listings. Offsets are the entries' cookies (memory_fs.h): 1 and
// 2 follow "." and "..", every entry's next offset is its cookie plus one, so a listing
// resumed at any offset the kernel was given continues after that entry, whatever changed.
#include <dirent.h>

#include <algorithm>
#include <mutex>

#include "common/log.h"
#include "fs/memory/memory_fs.h"

namespace efuse::fs::memory {

// Listings cached by the kernel
// -----------------------------
// Every change of a memory mount goes through the kernel, which bumps a directory's
// i_version at each change it makes through the mount (fuse_dir_changed) and resets a cached
// listing whose stamp no longer matches. So, once the mount can tell the kernel to drop a
// listing (an invalidator: a real mount), the first OPENDIR is answered ENOSYS: the kernel
// then opens every directory itself with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE and handle 0,
// sends no OPENDIR or RELEASEDIR again, and a warm walk (find, ls -R, du) costs no request.
// Two things the kernel's check does not see, handled here:
// - a reply built before a change that reaches the cache after it (the hole described in
//   fs/passthrough/passthrough_dir.cpp): every change of a directory's entries is counted
//   (touch_dir, ListingChanges), and the empty reply that would complete a cache drops it
//   while the latest change is less than the grace old;
// - a directory moved to another parent: its ".." changes, which the kernel does not count
//   as a change of that directory; rename() drops its cached listing.

void MemoryFs::drop_listing(uint64_t nodeid) {
  Invalidator* inv = inv_.load();
  if (inv == nullptr) return;
  // Safe from a request handler: dropping a directory's pages takes no lock a pending
  // request holds (fs/filesystem.h, Invalidator).
  (void)inv->inval_listing(nodeid);  // a failure is the session's to log and count
  listing_drops_.fetch_add(1, std::memory_order_relaxed);
}

Result<OpenInfo> MemoryFs::opendir(const Context&, uint64_t ino, int) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  if (!node->is_dir()) return Errno{ENOTDIR};
  if (no_opendir_.load()) return Errno{ENOSYS};  // an OPENDIR sent before the kernel knew
  if (inv_.load() != nullptr) {
    if (!no_opendir_.exchange(true))
      LOG_INFO("memory mount: directory listings cached by the kernel; no OPENDIR/RELEASEDIR "
               "from now on");
    return Errno{ENOSYS};
  }
  OpenInfo info;
  info.fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
  handles_.add(info.fh);
  return info;
}

Status MemoryFs::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                         DirSink& sink) {
  NodePtr dir;
  bool empty = true;  // nothing added to this reply
  {
    std::shared_lock lk(mu_);
    if (!(fh == 0 && no_opendir_.load()) && !check_fh(ino, fh).ok()) return Errno{EBADF};
    dir = get(ino);
    if (!dir) return Errno{ESTALE};
    if (!dir->is_dir()) return Errno{ENOTDIR};
    // "." and ".." get no nodeid in readdirplus: the kernel neither links nor counts them.
    auto dot = [&](std::string_view name, uint64_t nodeid, uint64_t next) {
      empty = false;
      if (!sink.plus()) return sink.add(name, nodeid, DT_DIR, next);
      Entry e;
      e.attr.st_ino = nodeid;
      e.attr.st_mode = S_IFDIR;
      return sink.add_plus(name, e, next);
    };
    if (off < 1 && !dot(".", dir->nodeid, 1)) return {};
    if (off < 2 && !dot("..", dir->parent, 2)) return {};
    for (auto it = dir->by_cookie.lower_bound(std::max<uint64_t>(off, kFirstCookie));
         it != dir->by_cookie.end(); ++it) {
      const std::string& name = it->second;
      uint64_t next = it->first + 1;
      if (!sink.fits(name)) return {};
      NodePtr child = get(dir->names.find(name)->second.nodeid);
      if (!child) return Errno{EIO};
      std::shared_lock nl(child->mu);
      if (!sink.plus()) {
        sink.add(name, child->nodeid, IFTODT(child->mode), next);
      } else {
        sink.add_plus(name, entry_of(*child), next);  // fits() was checked: cannot fail
      }
      empty = false;
    }
  }
  // An empty reply completes the kernel's cache of the listing (when the replies before it
  // were added): drop it instead if a change may have raced them. Only handle-0 readers
  // fill the cache (directories opened with a handle are not cached).
  if (empty && fh == 0 && inv_.load() != nullptr)
    dir->end_of_listing(true, listing_grace_ns_.load(), [&] { drop_listing(dir->nodeid); });
  return {};
}

Status MemoryFs::releasedir(const Context&, uint64_t, uint64_t fh) {
  return handles_.remove(fh) ? Status() : Status(Errno{EBADF});
}

Status MemoryFs::fsyncdir(const Context&, uint64_t ino, uint64_t fh, bool) {
  if (fh == 0 && no_opendir_.load()) {
    std::shared_lock lk(mu_);
    NodePtr dir = get(ino);
    if (!dir) return Errno{ESTALE};
    return dir->is_dir() ? Status() : Status(Errno{ENOTDIR});
  }
  return check_fh(ino, fh);
}

}  // namespace efuse::fs::memory

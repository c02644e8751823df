// Memory backend: directory listings. Offsets are the entries' cookies (memory_fs.h): 1 and
// 2 follow "." and "..", every entry's next offset is its cookie plus one, so a listing
// resumed at any offset the kernel was given continues after that entry, whatever changed.
#include <dirent.h>

#include <algorithm>
#include <mutex>

#include "fs/memory/memory_fs.h"

namespace efuse::fs::memory {

Result<OpenInfo> MemoryFs::opendir(const Context&, uint64_t ino, int) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  if (!node->is_dir()) return Errno{ENOTDIR};
  OpenInfo info;
  info.fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
  handles_.add(info.fh);
  return info;
}

Status MemoryFs::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                         DirSink& sink) {
  std::shared_lock lk(mu_);
  if (!check_fh(ino, fh).ok()) return Errno{EBADF};
  NodePtr dir = get(ino);
  if (!dir) return Errno{ESTALE};
  if (!dir->is_dir()) return Errno{ENOTDIR};
  // "." and ".." get no nodeid in readdirplus: the kernel neither links nor counts them.
  auto dot = [&](std::string_view name, uint64_t nodeid, uint64_t next) {
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
    if (!sink.fits(name)) break;
    NodePtr child = get(dir->names.find(name)->second.nodeid);
    if (!child) return Errno{EIO};
    std::shared_lock nl(child->mu);
    if (!sink.plus()) {
      sink.add(name, child->nodeid, IFTODT(child->mode), next);
    } else {
      sink.add_plus(name, entry_of(*child), next);  // fits() was checked: cannot fail
    }
  }
  return {};
}

Status MemoryFs::releasedir(const Context&, uint64_t, uint64_t fh) {
  return handles_.remove(fh) ? Status() : Status(Errno{EBADF});
}

Status MemoryFs::fsyncdir(const Context&, uint64_t ino, uint64_t fh, bool) {
  return check_fh(ino, fh);
}

}  // namespace efuse::fs::memory

// Memory backend: the data files libefuse_intercept.so reads itself (docs/intercept.md,
// "Memory mounts").
//
// A process under the library opens a file of a memory mount O_PATH through the mount (the
// kernel walks the path with the process's credentials, as an open would) and sends that
// descriptor over the mount's intercept socket (EFUSE_IREQ_OPEN_NODE). The intercept server
// checks it is a file of this mount and asks here for its data file, opened for reading,
// which the process then reads itself: the same tmpfs pages FUSE passthrough opens read and
// write, so it never sees other bytes than an open through the mount would.
//
// Granted only when that holds for as long as the descriptor may be used: every open of
// the file through the kernel is a passthrough one (no page cache of the FUSE inode whose
// dirty pages, of a shared mapping, the data file would not have yet), so not with io_path
// `cache`, not for a file the kernel refused as a passthrough backing file or holds open
// through efused now, and not for a set-ID file (whose unprivileged writers the kernel
// serves through efused); and only what the modes and the ACL grant the caller without
// capabilities (the kernel answers what they refuse, CAP_DAC_OVERRIDE included).
#include <fcntl.h>

#include <mutex>
#include <optional>
#include <shared_mutex>

#include "fs/memory/acl.h"
#include "fs/memory/memory_fs.h"
#include "fs/memory/store.h"

namespace efuse::fs::memory {

uint64_t MemoryFs::library_data_dev() const {
  const Store* store = pool_.store();
  return store != nullptr ? store->dev() : 0;
}

Result<int> MemoryFs::library_open_node(uint64_t nodeid, int flags, const LibraryCaller& caller) {
  Store* store = pool_.store();
  if (store == nullptr || !passthrough_.load() || !passthrough_io_.load()) return Errno{EOPNOTSUPP};
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC | O_PATH | O_DIRECTORY)))
    return Errno{EINVAL};
  std::shared_lock lk(mu_);
  NodePtr node = get(nodeid);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  if (!S_ISREG(node->mode)) return Errno{EINVAL};
  if (node->nlink == 0) return Errno{ESTALE};  // its data may be gone: the kernel answers
  if (node->no_passthrough || node->cached_opens > 0 || (node->mode & S_ISUID) ||
      (node->mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP))
    return Errno{EBUSY};
  std::optional<acl::Acl> access;
  if (auto it = node->xattrs.find(acl::kAccess); it != node->xattrs.end()) {
    access = acl::parse(it->second);
    if (!access) return Errno{EIO};
  }
  const acl::Caller who{caller.uid, caller.gid, &caller.groups};
  if (!acl::permits(who, node->mode, node->uid, node->gid, access ? &*access : nullptr, 4))
    return Errno{EACCES};
  // No O_CREAT: a data file that is not there is not conjured up here.
  auto fd = store->open(nodeid, flags & ~(O_CLOEXEC | O_NOCTTY));
  if (!fd.ok()) return Errno{fd.error()};
  return *fd;
}

}  // namespace efuse::fs::memory

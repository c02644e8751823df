// Passthrough backend: backing files that processes under libefuse_intercept.so write
// themselves (the contract is in docs/intercept.md).
//
// Such a process opens the backing file with its own credentials and writes to it with no
// request reaching efused, so whatever the kernel caches of the file through the mount
// (attributes, the size above all, and pages of opens through the page cache) would go
// stale. Before the library returns the descriptor of a writable open it hands it to efused
// (library_writing, over the intercept socket), which marks the file: its cached
// attributes and pages are dropped, every reply gives its attributes a validity of 0, and
// the kernel's opens of it do not use the page cache (passthrough, or direct I/O through
// efused). A mark is refused while the file has an open through the page cache (the
// library then lets the kernel serve the open). The mark stays while any open for writing
// of the file remains anywhere, forks and descriptors passed to other processes included:
// library_sweep() asks the kernel with a read lease, which it refuses (EAGAIN) exactly
// while the file is open for writing. Marks and sweeps run on the intercept server's one
// thread; lookups read the marks (library_mark_new).
#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <utility>
#include <vector>

#include "common/intercept_abi.h"
#include "fs/passthrough/creds.h"
#include "fs/passthrough/passthrough_fs.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {
namespace {

// Files marked at once per mount, each holding a descriptor; past it, writable opens go
// through the kernel.
constexpr size_t kMaxLibraryMarks = 4096;

enum class Writers { kNone, kSome, kUnknown };

// Whether any open for writing of `path_fd`'s file remains (processes, efused's own
// descriptors, other mounts): the kernel grants a read lease exactly when none does. The
// lease is dropped at once; an opener for writing that broke it in between waits only that
// long, and its break signal is SIGURG, which efused ignores (SIGIO would end it). kUnknown
// where leases cannot be had (file system without them, no CAP_LEASE): the mark stays.
Writers writers_of(int path_fd) {
  // O_NONBLOCK: someone's write lease on the file refuses the open instead of waiting.
  int fd = ::open(ProcPath(path_fd), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return Writers::kUnknown;
  Writers w = Writers::kUnknown;
  if (::fcntl(fd, F_SETSIG, SIGURG) == 0) {
    if (::fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
      w = Writers::kNone;
      (void)::fcntl(fd, F_SETLEASE, F_UNLCK);
    } else if (errno == EAGAIN) {
      w = Writers::kSome;
    }
  }
  ::close(fd);
  return w;
}

}  // namespace

void PassthroughFs::library_mark_new(Inode& inode) {
  // Pairs with the fence in library_writing: either it finds this inode in the table, or
  // this sees its mark.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (library_mark_count_.load(std::memory_order_relaxed) == 0) return;
  std::lock_guard lk(library_mu_);
  if (library_marks_.count({inode.dev, inode.ino}) != 0) inode.library_writes.store(true);
}

Status PassthroughFs::library_writing(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return last_errno();
  if (!S_ISREG(st.st_mode)) return Errno{EINVAL};
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return last_errno();
  if ((fl & O_ACCMODE) == O_RDONLY) return Errno{EBADF};
  const BackingKey key{st.st_dev, st.st_ino};
  std::shared_ptr<Inode> inode;
  {
    std::lock_guard lk(library_mu_);
    bool inserted = false;
    if (library_marks_.count(key) == 0) {
      if (library_marks_.size() >= kMaxLibraryMarks) {
        library_refusals_.fetch_add(1, std::memory_order_relaxed);
        return Errno{EBUSY};
      }
      // O_PATH: holding it keeps no open for writing, which the sweep's lease would see.
      int path_fd = ::open(ProcPath(fd), O_PATH | O_CLOEXEC);
      if (path_fd < 0) return last_errno();
      library_marks_.emplace(key, path_fd);
      inserted = true;
      library_mark_count_.store(library_marks_.size());
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);  // see library_mark_new
    inode = inodes_.find(key.dev, key.ino);
    if (inode) {
      std::lock_guard io(inode->io_mu);
      if (inode->io_opens > 0 && inode->io_cached) {
        // Opens through the page cache would go on reading (and mapping) pages the
        // library's writes leave stale.
        if (inserted) {
          ::close(library_marks_[key]);
          library_marks_.erase(key);
          library_mark_count_.store(library_marks_.size());
        }
        library_refusals_.fetch_add(1, std::memory_order_relaxed);
        return Errno{EBUSY};
      }
      inode->library_writes.store(true);
    }
  }
  // After the mark: a reply read before it and sent after this is discarded by the kernel
  // (the invalidation moves the inode's attr_version past it); replies after carry 0.
  if (inode)
    if (auto* inv = inv_.load()) (void)inv->inval_inode(inode->nodeid, true);
  return {};
}

Status PassthroughFs::library_changed(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return last_errno();
  if (!S_ISREG(st.st_mode)) return Errno{EINVAL};
  if (auto inode = inodes_.find(st.st_dev, st.st_ino))
    if (auto* inv = inv_.load()) (void)inv->inval_inode(inode->nodeid, false);
  return {};
}

size_t PassthroughFs::library_sweep() {
  std::vector<std::pair<BackingKey, int>> marks;
  {
    std::lock_guard lk(library_mu_);
    marks.assign(library_marks_.begin(), library_marks_.end());
  }
  for (const auto& [key, path_fd] : marks) {
    // efused's own writable opens (FUSE passthrough) would refuse the lease: asked again
    // once they are closed.
    auto known = inodes_.find(key.dev, key.ino);
    if (known && known->writers.load() > 0) continue;
    if (writers_of(path_fd) != Writers::kNone) continue;
    // Only this thread marks: a library that opened the file for writing since sends its
    // WRITING after this and marks it again before it writes.
    std::lock_guard lk(library_mu_);
    library_marks_.erase(key);
    library_mark_count_.store(library_marks_.size());
    if (auto inode = inodes_.find(key.dev, key.ino)) inode->library_writes.store(false);
    ::close(path_fd);
  }
  return library_mark_count_.load();
}

size_t PassthroughFs::library_marked() const {
  std::lock_guard lk(library_mu_);
  return library_marks_.size();
}

Result<int> PassthroughFs::library_open(std::string_view path, int flags,
                                        const LibraryCaller& caller) {
  if (path.empty() || path.front() == '/' || path.size() >= EFUSE_INTERCEPT_PATH_MAX ||
      path.find('\0') != std::string_view::npos || (flags & ~EFUSE_IOPEN_FLAGS) != 0 ||
      (flags & O_ACCMODE) == O_ACCMODE)
    return Errno{EINVAL};
  // Root's capabilities are not known here (a root process may have dropped them): it opens
  // for itself, or the kernel answers.
  if (caller.uid == 0) return Errno{EPERM};
  const bool writing = (flags & O_ACCMODE) != O_RDONLY;
  if (writing && !library_writes()) return Errno{EROFS};
  auto root = inodes_.get(1);
  if (!root) return Errno{ESTALE};
  PathFd root_fd = root->pin();
  if (!root_fd.ok()) return root_fd.error();
  const std::string rel(path);
  int fd = -1;
  int err = 0;
  {
    std::vector<gid_t> groups(caller.groups.begin(), caller.groups.end());
    CredScope as_caller(caller.uid, caller.gid, groups.data(), groups.size());
    if (!as_caller.ok()) return Errno{EPERM};
    if (!caller.must_search.empty() &&
        ::faccessat(AT_FDCWD, caller.must_search.c_str(), X_OK, AT_EACCESS) != 0)
      return Errno{EACCES};
    // The object first, following no symlink anywhere and never leaving the backing tree
    // (the kernel resolves symlinks relative to the mount); every directory on the way is
    // searched with the caller's identity, from the backing root down, as through the mount.
    struct open_how how = {};
    how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int pfd = static_cast<int>(::syscall(SYS_openat2, static_cast<int>(root_fd), rel.c_str(),
                                         &how, sizeof how));
    struct stat st;
    if (pfd < 0) {
      err = errno;
    } else if (::fstat(pfd, &st) != 0) {
      err = errno;
    } else if (!S_ISREG(st.st_mode)) {
      err = EINVAL;  // never opened: a FIFO would block, a device is nodev through the mount
    } else {
      // The same inode, now opened: the permission check (modes, ACLs) is the backing file
      // system's, with the caller's identity.
      fd = ::open(ProcPath(pfd), (flags & ~O_NOCTTY) | O_NOCTTY | O_CLOEXEC);
      if (fd < 0) err = errno;
    }
    if (pfd >= 0) ::close(pfd);
  }
  if (fd < 0) return Errno{err};
  if (writing) {
    Status s = library_writing(fd);
    if (!s.ok()) {
      ::close(fd);
      return Errno{s.error()};
    }
  }
  return fd;
}

}  // namespace efuse::fs::passthrough

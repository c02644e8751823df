// libefuse_intercept.so: the exported file calls. Each either serves a call on a published
// mount from its backing directory (path calls: only read-only opens of regular files, stat
// and access; descriptor calls: on the descriptors it handed out), or passes it to libc
// unchanged, counting the calls on intercepted mounts that go through the kernel.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "intercept/state.h"

using namespace efuse::intercept;

namespace {

static_assert(sizeof(struct stat) == sizeof(struct stat64), "stat and stat64 agree here");

constexpr int kDecline = -2;

// The caller may reach the mountpoint's parent (the kernel checks every component above
// the mount; the backing directory's own ancestors are checked by the open itself).
bool parent_ok(const Resolved& r, int flags) {
  const Mount* m = r.mount;
  // Checked when the mount was loaded; or relative to a dirfd: the kernel checks nothing above.
  if (m->parent_open || r.bound) return true;
  int saved = errno;
  bool ok = sys(SYS_faccessat2, AT_FDCWD, reinterpret_cast<long>(m->parent), X_OK, flags) == 0;
  errno = saved;
  return ok;
}

// An O_PATH descriptor of the backing object, following no symlink anywhere (a symlink may
// point outside the mount, where the kernel would resolve it differently): returns the fd,
// -1 with errno for an answer the kernel path gives alike (ENOENT, ENOTDIR), kDecline else.
int open_path(const Resolved& r, bool nofollow) {
  struct open_how how = {};
  how.flags = O_PATH | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0);
  // Beneath a bound directory: ".." cannot occur (without_dots) and nothing may lead out.
  how.resolve = RESOLVE_NO_SYMLINKS | (r.bound || r.beneath ? RESOLVE_BENEATH : 0);
  int saved = errno;
  long fd = sys(SYS_openat2, r.at_fd, reinterpret_cast<long>(r.at_path),
                reinterpret_cast<long>(&how), sizeof how);
  if (fd >= 0) {
    errno = saved;
    return static_cast<int>(fd);
  }
  if (errno == ENOENT || errno == ENOTDIR) return -1;
  errno = saved;
  return kDecline;
}

void close_quiet(int fd) {
  int saved = errno;
  sys(SYS_close, fd);
  errno = saved;
}

bool servable(const Resolved& r, int access_flags) {
  return !r.decline && r.mount->serve && mount_alive(r.mount) && parent_ok(r, access_flags);
}

// Path calls answered from the backing tree by this process (not opens, which efused may
// make for it: hand_over).
bool servable_here(const Resolved& r, int access_flags) {
  return !r.no_root && servable(r, access_flags);
}

// Never served (O_TMPFILE carries O_DIRECTORY).
constexpr int kUnservedOpenFlags = O_PATH | O_DIRECTORY | O_DIRECT | O_NOATIME | O_ASYNC;
// Served only with an open for writing (O_CREAT only where the file exists: creating is the
// kernel's, which must drop a cached "no such name" it may hold).
constexpr int kWriteOpenFlags = O_CREAT | O_TRUNC | O_APPEND;

// Registers a backing file the library opened as the mount's.
int handed_out(const Resolved& r, long fd, const struct stat& st, int saved, bool writable) {
  if (fd >= kMaxFds) {
    close_quiet(static_cast<int>(fd));
    errno = saved;
    return kDecline;
  }
  errno = saved;
  fd_identity(static_cast<int>(fd), st.st_dev, st.st_ino);
  fd_put(static_cast<int>(fd), kFdLibrary | (writable ? kFdWritable : 0) |
                                   static_cast<uint32_t>(r.index + 1));
  return static_cast<int>(fd);
}

// The hand-over: this process may not open the backing file itself (refused by the
// backing file system, or the backing directory out of its reach) while the mount may
// grant it, so efused opens it with this thread's credentials (the kernel's record of them
// when it connected: uid, gid, groups), checked by the backing file system below the
// backing root as the kernel checks them below the mountpoint, and passes the descriptor
// over the socket (EFUSE_IREQ_OPEN). Only for what the socket's credentials stand for: not
// for root (whose capabilities efused cannot know), nor for a thread whose file system
// identity differs from its effective one (setfsuid). Any refusal: the kernel answers.
int hand_over(const Resolved& r, int flags, int saved) {
  Mount* m = r.mount;
  const bool writing = (flags & O_ACCMODE) != O_RDONLY;
  constexpr int kHandled = EFUSE_IOPEN_FLAGS | O_CREAT | O_TRUNC | O_NOFOLLOW;
  errno = saved;
  if (!m->opens || r.rest == nullptr || r.bound || (flags & ~kHandled) ||
      (writing && !mount_writes(m)))
    return kDecline;
  long euid = sys(SYS_geteuid);
  if (euid == 0 || sys(SYS_setfsuid, -1) != euid || sys(SYS_setfsgid, -1) != sys(SYS_getegid))
    return kDecline;
  int fd = ask_efused_open(m, r.rest, flags & EFUSE_IOPEN_FLAGS & ~O_CLOEXEC,
                           (flags & O_CLOEXEC) != 0);
  struct stat st;
  if (fd < 0 || sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close_quiet(fd);
    errno = saved;
    return kDecline;  // missing, refused, efused gone: the kernel answers
  }
  if (writing && (flags & O_TRUNC) && sys(SYS_ftruncate, fd, 0) != 0) {
    int err = errno;
    close_quiet(fd);
    errno = err;
    return -1;
  }
  return handed_out(r, fd, st, saved, writing);
}

bool refused_here(int err) { return err == EACCES || err == EPERM; }

// Opens a regular file of the backing tree with the caller's credentials: its type first
// (a FIFO or a device must not be opened, not even to look: the mount is nodev and a FIFO
// would block), then the open itself, following no symlink anywhere (one swapped in
// meanwhile, or one on the way that the first look followed: ELOOP, the kernel's), then
// the check that the file opened is the one looked at. Three calls and two walks, instead
// of an O_PATH open, its fstat, a reopen through /proc/self/fd and moving the descriptor
// to the O_PATH one's number (the open here gets the lowest free number itself).
// An open for writing is handed to efused before it is returned (EFUSE_IREQ_WRITING:
// the kernel's caches of the file are dropped and stay off while it is written; a refusal
// lets the kernel serve the open), and O_TRUNC truncates only after that.
int lib_open(const Resolved& r, int flags) {
  const bool writing = (flags & O_ACCMODE) != O_RDONLY;
  if ((flags & kUnservedOpenFlags) || (flags & O_ACCMODE) == O_ACCMODE) return kDecline;
  if (writing ? (flags & O_EXCL) || !mount_writes(r.mount) : (flags & kWriteOpenFlags) != 0)
    return kDecline;
  struct stat st;
  int saved = errno;
  if (r.no_root) return hand_over(r, flags, saved);
  if (sys(SYS_newfstatat, r.at_fd, reinterpret_cast<long>(r.at_path), reinterpret_cast<long>(&st),
          AT_SYMLINK_NOFOLLOW) != 0) {
    if (refused_here(errno)) return hand_over(r, flags, saved);
    if ((errno != ENOENT && errno != ENOTDIR) || (flags & O_CREAT)) {
      errno = saved;
      return kDecline;
    }
    if (r.single_name) return -1;  // nothing on the way could have led elsewhere
    // A symlink on the way may lead elsewhere through the mount: ENOENT is the answer only
    // when the walk that follows none says so too.
    int pfd = open_path(r, true);
    if (pfd >= 0) close_quiet(pfd);
    if (pfd == -1) return -1;
    errno = saved;
    return kDecline;
  }
  if (!S_ISREG(st.st_mode)) {  // directories, FIFOs, devices, symlinks: the kernel path
    errno = saved;
    return kDecline;
  }
  long fd;
  const int oflags = (flags & ~(O_CREAT | O_TRUNC)) | O_NOFOLLOW;
  if (r.single_name) {
    fd = sys(SYS_openat, r.at_fd, reinterpret_cast<long>(r.at_path), oflags, 0);
  } else {
    struct open_how how = {};
    how.flags = static_cast<uint64_t>(oflags);
    how.resolve = RESOLVE_NO_SYMLINKS | (r.bound || r.beneath ? RESOLVE_BENEATH : 0);
    fd = sys(SYS_openat2, r.at_fd, reinterpret_cast<long>(r.at_path), reinterpret_cast<long>(&how),
             sizeof how);
  }
  if (fd < 0) {
    if (refused_here(errno)) return hand_over(r, flags, saved);
    errno = saved;
    return kDecline;  // ELOOP and the like: the kernel path answers
  }
  struct stat now;
  if (sys(SYS_fstat, fd, reinterpret_cast<long>(&now)) != 0 || now.st_ino != st.st_ino ||
      now.st_dev != st.st_dev || !S_ISREG(now.st_mode)) {
    close_quiet(static_cast<int>(fd));  // replaced between the two calls
    errno = saved;
    return kDecline;
  }
  if (writing) {
    if (ask_efused(r.mount, EFUSE_IREQ_WRITING, static_cast<int>(fd)) != 0) {
      close_quiet(static_cast<int>(fd));  // refused, or efused is gone: the kernel answers
      errno = saved;
      return kDecline;
    }
    if ((flags & O_TRUNC) && sys(SYS_ftruncate, fd, 0) != 0) {
      int err = errno;
      close_quiet(static_cast<int>(fd));
      errno = err;
      return -1;
    }
  }
  return handed_out(r, fd, now, saved, writing);
}

// A memory mount (Mount::nodes): an open for reading of a regular file is served with the
// file's data file, the tmpfs file whose pages FUSE passthrough opens of it read and write.
// The kernel walks the path (an O_PATH open through the mount, with the caller's
// credentials, following symlinks as the open would: no FUSE request while its lookups are
// cached), then efused, sent that descriptor over the mount's socket, checks the caller's
// read permission by the file's mode and ACL and answers with the data file opened for
// reading (EFUSE_IREQ_OPEN_NODE). The O_PATH descriptor stays as the companion (state.h).
// What efused refuses, and every other kind of open, the kernel answers.
int node_open(const Resolved& r, int dirfd, const char* path, int flags) {
  Mount* m = r.mount;
  constexpr int kNodeFlags = (EFUSE_IOPEN_FLAGS & ~O_ACCMODE) | O_NOFOLLOW;
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & ~kNodeFlags)) return kDecline;
  int saved = errno;
  // efused checks the credentials the socket records (effective ids); the kernel checks the
  // file system ids: only where they agree.
  long euid = sys(SYS_geteuid);
  if (sys(SYS_setfsuid, -1) != euid || sys(SYS_setfsgid, -1) != sys(SYS_getegid)) {
    errno = saved;
    return kDecline;
  }
  long p = sys(SYS_openat, dirfd, reinterpret_cast<long>(path),
               O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW));
  if (p < 0) {
    // What the walk answered an open answers too (a missing name, a file where a directory
    // must be); anything else the kernel says again.
    if (errno == ENOENT || errno == ENOTDIR) return -1;
    errno = saved;
    return kDecline;
  }
  // A regular file of this mount (the path may have led out of it): the kernel's cached
  // attributes tell, with no request (neither changes for an inode's life).
  struct statx sx;
  long comp = sys(SYS_statx, p, reinterpret_cast<long>(""), AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                  STATX_TYPE, reinterpret_cast<long>(&sx)) == 0 &&
                      S_ISREG(sx.stx_mode) && makedev(sx.stx_dev_major, sx.stx_dev_minor) == m->dev
                  ? sys(SYS_fcntl, p, (flags & O_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, kHighFd)
                  : -1;
  close_quiet(static_cast<int>(p));
  if (comp < 0 || comp >= kMaxFds) {
    if (comp >= 0) close_quiet(static_cast<int>(comp));
    errno = saved;
    return kDecline;
  }
  int fd = ask_efused_node(m, static_cast<int>(comp), flags & kNodeFlags & ~O_CLOEXEC,
                           (flags & O_CLOEXEC) != 0);
  struct stat st;
  if (fd < 0 || fd >= kMaxFds || sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 ||
      !S_ISREG(st.st_mode) || st.st_dev != m->data_dev) {
    if (fd >= 0) close_quiet(fd);
    close_quiet(static_cast<int>(comp));
    errno = saved;
    return kDecline;  // refused, or efused is gone: the kernel answers
  }
  errno = saved;
  fd_identity(fd, st.st_dev, st.st_ino);
  fd_put(fd, kFdLibrary | static_cast<uint32_t>(r.index + 1));
  fd_set_companion(fd, static_cast<int>(comp));
  return fd;
}

template <typename Real>
int open_common(Real real, int dirfd, const char* path, int flags, mode_t mode) {
  Guard g;
  Resolved r;
  if (!g.entered || !resolve(dirfd, path, &r)) {
    int fd = real(dirfd, path, flags, mode);
    // A number the library knew, closed behind its back (a raw close): not the mount's now.
    if (fd >= 0 && fd_entry(fd) != 0) fd_clear(fd);
    return fd;
  }
  if (servable(r, AT_EACCESS)) {
    int fd = lib_open(r, flags);
    if (fd != kDecline) {
      count(r.mount, EFUSE_IOP_open, true);
      return fd;
    }
  } else if (!r.decline && r.mount->nodes && mount_alive(r.mount)) {
    int fd = node_open(r, dirfd, path, flags);
    if (fd != kDecline) {
      count(r.mount, EFUSE_IOP_open, true);
      return fd;
    }
  }
  int fd = real(dirfd, path, flags, mode);
  count(r.mount, EFUSE_IOP_open, false);
  if (fd >= 0) {
    fd_put(fd, kFdKernel | static_cast<uint32_t>(r.index + 1));
    // A directory opened relative to a bound one (fts, find): bound now, from its parent.
    if (r.bound && (flags & O_DIRECTORY) && !(flags & O_PATH))
      fd_bind_child(fd, r.index, r.at_fd, r.at_path);
  }
  return fd;
}

int real_openat_fn(int dirfd, const char* path, int flags, mode_t mode) {
  return EFUSE_REAL(openat)(dirfd, path, flags, mode);
}

mode_t mode_arg(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? static_cast<mode_t>(va_arg(ap, int))
                                                               : 0;
}

// The descriptor's mount when the library handed it out, for a call that needs efused alive:
// nullptr and errno ENOTCONN when it is gone (like the mount's files after it died).
enum class FdKind { Other, Library, Kernel };
FdKind classify(int fd, int op, bool* dead) {
  *dead = false;
  uint32_t e = fd_entry(fd);
  if (e == 0 || e == kFdOther) return FdKind::Other;
  Mount* m = mount_at(fd_mount(e));
  if (e & kFdKernel) {
    count(m, op, false);
    return FdKind::Kernel;
  }
  if (!((e & kFdWritable) ? writes_alive(m) : files_alive(m))) {
    // Still the file the library opened? (Else the number was reused behind its back.)
    struct stat st;
    int saved = errno;
    bool same = sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) == 0 &&
                fd_same(fd, st.st_dev, st.st_ino);
    errno = saved;
    if (!same) {
      fd_clear(fd);
      return FdKind::Other;
    }
    *dead = true;
    return FdKind::Library;
  }
  count(m, op, true);
  return FdKind::Library;
}

// A memory mount's library descriptor (a data file): its companion, through which the
// kernel answers a call about the file (counted as the kernel's under `op` unless < 0);
// -1 when `fd` has none (not a data file the library handed out: libc's call as it is);
// -2 with errno ENOTCONN when efused is gone, as for every library descriptor.
int companion_for(int fd, int op) {
  uint32_t e = fd_entry(fd);
  int c = (e & kFdLibrary) ? fd_companion(fd) : -1;
  if (c < 0) return -1;
  struct stat own;
  int saved = errno;
  bool same = sys(SYS_fstat, fd, reinterpret_cast<long>(&own)) == 0 &&
              fd_same(fd, own.st_dev, own.st_ino);
  errno = saved;
  if (!same) {  // closed behind the library's back, the number reused
    fd_clear(fd);
    return -1;
  }
  Mount* m = mount_at(fd_mount(e));
  if (!files_alive(m)) {
    errno = ENOTCONN;
    return -2;
  }
  if (op >= 0) count(m, op, false);
  return c;
}

// "/proc/self/fd/N": the file a companion names, for calls that take a path (the magic link
// is followed to the mount's inode, whatever it is called now).
struct ProcFd {
  explicit ProcFd(int fd) { *append_uint(path + 14, static_cast<unsigned>(fd)) = '\0'; }
  long arg() const { return reinterpret_cast<long>(path); }
  char path[40] = "/proc/self/fd/";
};

#define EFUSE_DEAD_CHECK(fd, op)        \
  do {                                  \
    bool dead_;                         \
    classify((fd), (op), &dead_);       \
    if (dead_) {                        \
      errno = ENOTCONN;                 \
      return -1;                        \
    }                                   \
  } while (0)

int stat_resolved(const Resolved& r, struct stat* st, bool nofollow) {
  if (r.single_name) {
    // No symlink on the way but the name itself: one lstat; a symlink to follow is the
    // kernel's (relative to the mount).
    int saved = errno;
    long rc = sys(SYS_newfstatat, r.at_fd, reinterpret_cast<long>(r.at_path),
                  reinterpret_cast<long>(st), AT_SYMLINK_NOFOLLOW);
    if (rc == 0 && !(S_ISLNK(st->st_mode) && !nofollow)) {
      errno = saved;
      rewrite_stat(r.mount, st);
      return 0;
    }
    if (rc != 0 && (errno == ENOENT || errno == ENOTDIR)) return -1;
    errno = saved;
    if (rc == 0) return kDecline;
  }
  int pfd = open_path(r, nofollow);
  if (pfd < 0) return pfd;
  int saved = errno;
  long rc = sys(SYS_fstat, pfd, reinterpret_cast<long>(st));
  close_quiet(pfd);
  if (rc != 0) return kDecline;
  errno = saved;
  rewrite_stat(r.mount, st);
  return 0;
}

int fstatat_common(int dirfd, const char* path, struct stat* st, int flags) {
  Guard g;
  if (g.entered && (flags & AT_EMPTY_PATH) && path != nullptr && path[0] == '\0') {
    int c = companion_for(dirfd, EFUSE_IOP_stat);
    if (c != -1) return c < 0 ? -1 : EFUSE_REAL(fstatat)(c, path, st, flags);
    uint32_t e = fd_entry(dirfd);
    if (e & kFdLibrary) {
      EFUSE_DEAD_CHECK(dirfd, EFUSE_IOP_stat);
      int rc = EFUSE_REAL(fstatat)(dirfd, path, st, flags);
      if (rc == 0 && fd_same(dirfd, st->st_dev, st->st_ino)) rewrite_stat(mount_at(fd_mount(e)), st);
      else if (rc == 0) fd_clear(dirfd);
      return rc;
    }
    if (e & kFdKernel) count(mount_at(fd_mount(e)), EFUSE_IOP_stat, false);
    return EFUSE_REAL(fstatat)(dirfd, path, st, flags);
  }
  Resolved r;
  if (!g.entered || !resolve(dirfd, path, &r)) return EFUSE_REAL(fstatat)(dirfd, path, st, flags);
  if (!(flags & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT)) && servable_here(r, AT_EACCESS)) {
    int rc = stat_resolved(r, st, flags & AT_SYMLINK_NOFOLLOW);
    if (rc != kDecline) {
      count(r.mount, EFUSE_IOP_stat, true);
      return rc;
    }
  }
  count(r.mount, EFUSE_IOP_stat, false);
  return EFUSE_REAL(fstatat)(dirfd, path, st, flags);
}

int fstat_common(int fd, struct stat* st) {
  int c = companion_for(fd, EFUSE_IOP_stat);
  if (c != -1) return c < 0 ? -1 : EFUSE_REAL(fstat)(c, st);
  uint32_t e = fd_entry(fd);
  if (e & kFdLibrary) EFUSE_DEAD_CHECK(fd, EFUSE_IOP_stat);
  else if (e & kFdKernel) count(mount_at(fd_mount(e)), EFUSE_IOP_stat, false);
  int rc = EFUSE_REAL(fstat)(fd, st);
  if (rc == 0 && (e & kFdLibrary)) {
    if (fd_same(fd, st->st_dev, st->st_ino)) rewrite_stat(mount_at(fd_mount(e)), st);
    else fd_clear(fd);
  }
  return rc;
}

// statx as the kernel reports it for a FUSE mount whose server has no STATX: the basic
// fields, no birth time, the mount's device and id, only the VFS's own attributes.
constexpr unsigned kServedStatxMask = STATX_BASIC_STATS | STATX_BTIME | STATX_MNT_ID;
void rewrite_statx(const Mount* m, bool is_root, struct statx* sx) {
  sx->stx_mask = (sx->stx_mask & STATX_BASIC_STATS) | STATX_MNT_ID;
  sx->stx_btime = {};
  sx->stx_dev_major = major(m->dev);
  sx->stx_dev_minor = minor(m->dev);
  sx->stx_mnt_id = m->mnt_id;
  sx->stx_attributes_mask = m->attributes_mask;
  sx->stx_attributes = is_root ? (STATX_ATTR_MOUNT_ROOT & m->attributes_mask) : 0;
}

ssize_t io_common(int fd, int op) {
  bool dead;
  classify(fd, op, &dead);
  if (dead) {
    errno = ENOTCONN;
    return -1;
  }
  return 0;
}

}  // namespace

extern "C" {

// ---- open ------------------------------------------------------------------------------
__attribute__((visibility("default"))) int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return open_common(real_openat_fn, AT_FDCWD, path, flags, mode);
}
__attribute__((visibility("default"))) int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return open_common(real_openat_fn, AT_FDCWD, path, flags, mode);
}
__attribute__((visibility("default"))) int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return open_common(real_openat_fn, dirfd, path, flags, mode);
}
__attribute__((visibility("default"))) int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return open_common(real_openat_fn, dirfd, path, flags, mode);
}
// _FORTIFY_SOURCE's checked variants (no O_CREAT, so no mode).
__attribute__((visibility("default"))) int __open_2(const char* path, int flags) {
  return open_common(real_openat_fn, AT_FDCWD, path, flags, 0);
}
__attribute__((visibility("default"))) int __open64_2(const char* path, int flags) {
  return open_common(real_openat_fn, AT_FDCWD, path, flags, 0);
}
__attribute__((visibility("default"))) int __openat_2(int dirfd, const char* path, int flags) {
  return open_common(real_openat_fn, dirfd, path, flags, 0);
}
__attribute__((visibility("default"))) int __openat64_2(int dirfd, const char* path, int flags) {
  return open_common(real_openat_fn, dirfd, path, flags, 0);
}

// ---- close, dup, fcntl, close_range ---------------------------------------------------------
__attribute__((visibility("default"))) int close(int fd) {
  uint32_t e = fd_entry(fd);
  if (e != 0) {
    fd_clear(fd);  // before the number can be handed out again
    count(mount_at(fd_mount(e)), EFUSE_IOP_close, (e & kFdLibrary) != 0);
  }
  internal_fd_gone(fd);
  return EFUSE_REAL(close)(fd);
}

__attribute__((visibility("default"))) int dup(int fd) {
  int r = EFUSE_REAL(dup)(fd);
  if (r >= 0) fd_copy(fd, r);
  return r;
}
__attribute__((visibility("default"))) int dup2(int fd, int fd2) {
  if (fd != fd2) internal_fd_gone(fd2);
  int r = EFUSE_REAL(dup2)(fd, fd2);
  if (r >= 0) fd_copy(fd, r);
  return r;
}
__attribute__((visibility("default"))) int dup3(int fd, int fd2, int flags) {
  if (fd != fd2) internal_fd_gone(fd2);
  int r = EFUSE_REAL(dup3)(fd, fd2, flags);
  if (r >= 0) fd_copy(fd, r);
  return r;
}

static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, va_list ap) {
  void* arg = va_arg(ap, void*);  // every command takes at most one argument, int or pointer
  int r = real(fd, cmd, arg);
  if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) fd_copy(fd, r);
  // A data file's companion crosses an exec exactly when it does.
  if (r >= 0 && cmd == F_SETFD && fd_companion(fd) >= 0) {
    int saved = errno;
    sys(SYS_fcntl, fd_companion(fd), F_SETFD, reinterpret_cast<long>(arg) & FD_CLOEXEC);
    errno = saved;
  }
  return r;
}
__attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  int r = fcntl_common(EFUSE_REAL(fcntl), fd, cmd, ap);
  va_end(ap);
  return r;
}
__attribute__((visibility("default"))) int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  int r = fcntl_common(EFUSE_REAL(fcntl64), fd, cmd, ap);
  va_end(ap);
  return r;
}

// FIOCLEX and FIONCLEX (Python's os.set_inheritable) set what F_SETFD sets: a data file's
// companion follows. Every other request is libc's as it is.
__attribute__((visibility("default"))) int ioctl(int fd, unsigned long request, ...) {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);  // every request takes at most one argument
  va_end(ap);
  int r = EFUSE_REAL(ioctl)(fd, request, arg);
  if (r == 0 && (request == FIOCLEX || request == FIONCLEX) && fd_companion(fd) >= 0) {
    int saved = errno;
    sys(SYS_fcntl, fd_companion(fd), F_SETFD, request == FIOCLEX ? FD_CLOEXEC : 0);  // O_PATH
    errno = saved;
  }
  return r;
}

static void forget_range(unsigned first, unsigned last) {
  for (unsigned fd = first; fd <= last && fd < static_cast<unsigned>(kMaxFds); ++fd)
    if (fd_entry(static_cast<int>(fd)) != 0) fd_clear(static_cast<int>(fd));
  internal_fds_gone(first, last);
}
__attribute__((visibility("default"))) int close_range(unsigned first, unsigned last, int flags) {
  if (!(flags & CLOSE_RANGE_CLOEXEC) && first <= last) forget_range(first, last);
  return EFUSE_REAL(close_range)(first, last, flags);
}
__attribute__((visibility("default"))) void closefrom(int lowfd) {
  if (lowfd >= 0) forget_range(static_cast<unsigned>(lowfd), ~0u);
  EFUSE_REAL(closefrom)(lowfd);
}

// ---- read, write, lseek ------------------------------------------------------------------
__attribute__((visibility("default"))) ssize_t read(int fd, void* buf, size_t n) {
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return EFUSE_REAL(read)(fd, buf, n);
}
__attribute__((visibility("default"))) ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  using Fn = ssize_t (*)(int, void*, size_t, size_t);
  static std::atomic<void*> slot{nullptr};
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return reinterpret_cast<Fn>(real_symbol(&slot, "__read_chk"))(fd, buf, n, buflen);
}
__attribute__((visibility("default"))) ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return EFUSE_REAL(pread)(fd, buf, n, off);
}
__attribute__((visibility("default"))) ssize_t pread64(int fd, void* buf, size_t n, off64_t off) {
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return EFUSE_REAL(pread64)(fd, buf, n, off);
}
__attribute__((visibility("default"))) ssize_t __pread_chk(int fd, void* buf, size_t n, off_t off,
                                                          size_t buflen) {
  using Fn = ssize_t (*)(int, void*, size_t, off_t, size_t);
  static std::atomic<void*> slot{nullptr};
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return reinterpret_cast<Fn>(real_symbol(&slot, "__pread_chk"))(fd, buf, n, off, buflen);
}
__attribute__((visibility("default"))) ssize_t __pread64_chk(int fd, void* buf, size_t n,
                                                            off64_t off, size_t buflen) {
  using Fn = ssize_t (*)(int, void*, size_t, off64_t, size_t);
  static std::atomic<void*> slot{nullptr};
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return reinterpret_cast<Fn>(real_symbol(&slot, "__pread64_chk"))(fd, buf, n, off, buflen);
}
__attribute__((visibility("default"))) ssize_t readv(int fd, const struct iovec* iov, int n) {
  if (io_common(fd, EFUSE_IOP_read) < 0) return -1;
  return EFUSE_REAL(readv)(fd, iov, n);
}
__attribute__((visibility("default"))) ssize_t write(int fd, const void* buf, size_t n) {
  if (io_common(fd, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(write)(fd, buf, n);
}
__attribute__((visibility("default"))) ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  if (io_common(fd, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(pwrite)(fd, buf, n, off);
}
__attribute__((visibility("default"))) ssize_t pwrite64(int fd, const void* buf, size_t n,
                                                       off64_t off) {
  if (io_common(fd, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(pwrite64)(fd, buf, n, off);
}
__attribute__((visibility("default"))) ssize_t writev(int fd, const struct iovec* iov, int n) {
  if (io_common(fd, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(writev)(fd, iov, n);
}
__attribute__((visibility("default"))) off_t lseek(int fd, off_t off, int whence) {
  if (io_common(fd, EFUSE_IOP_lseek) < 0) return -1;
  return EFUSE_REAL(lseek)(fd, off, whence);
}
__attribute__((visibility("default"))) off64_t lseek64(int fd, off64_t off, int whence) {
  if (io_common(fd, EFUSE_IOP_lseek) < 0) return -1;
  return EFUSE_REAL(lseek64)(fd, off, whence);
}

// Copies in the kernel: the source is read, the destination written.
__attribute__((visibility("default"))) ssize_t copy_file_range(int in, off64_t* in_off, int out,
                                                              off64_t* out_off, size_t n,
                                                              unsigned flags) {
  if (io_common(in, EFUSE_IOP_read) < 0 || io_common(out, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(copy_file_range)(in, in_off, out, out_off, n, flags);
}
__attribute__((visibility("default"))) ssize_t sendfile(int out, int in, off_t* off, size_t n) {
  if (io_common(in, EFUSE_IOP_read) < 0 || io_common(out, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(sendfile)(out, in, off, n);
}
__attribute__((visibility("default"))) ssize_t sendfile64(int out, int in, off64_t* off, size_t n) {
  if (io_common(in, EFUSE_IOP_read) < 0 || io_common(out, EFUSE_IOP_write) < 0) return -1;
  return EFUSE_REAL(sendfile64)(out, in, off, n);
}

// Attribute changes through a descriptor the library opened reach the backing file
// directly: refused with EROFS on a read-only mount, as the kernel refuses them there, and
// told to efused before they return (EFUSE_IREQ_CHANGED), which drops the kernel's cached
// attributes and ACLs of the file.
// On a memory mount's data file the change is made through the mount instead, by the
// companion's /proc/self/fd path (`by_path`): the kernel checks and applies it as for the
// mount's own descriptor.
extern "C++" template <typename Change, typename ByPath>
int fd_change(int fd, Change&& change, ByPath&& by_path) {
  int c = companion_for(fd, -1);
  if (c != -1) return c < 0 ? -1 : static_cast<int>(by_path(ProcFd(c).arg()));
  uint32_t e = fd_entry(fd);
  if (!(e & kFdLibrary)) return change();
  Mount* m = mount_at(fd_mount(e));
  if (!((e & kFdWritable) ? writes_alive(m) : files_alive(m))) {
    errno = ENOTCONN;
    return -1;
  }
  if (m->flags & EFUSE_IR_READ_ONLY) {
    errno = EROFS;
    return -1;
  }
  int rc = change();
  if (rc == 0 && m->writes) {
    int saved = errno;
    (void)ask_efused(m, EFUSE_IREQ_CHANGED, fd);  // fails only when efused is gone
    errno = saved;
  }
  return rc;
}
__attribute__((visibility("default"))) int fchmod(int fd, mode_t mode) {
  return fd_change(fd, [&] { return EFUSE_REAL(fchmod)(fd, mode); },
                   [&](long p) { return sys(SYS_fchmodat, AT_FDCWD, p, mode); });
}
__attribute__((visibility("default"))) int fchown(int fd, uid_t uid, gid_t gid) {
  return fd_change(fd, [&] { return EFUSE_REAL(fchown)(fd, uid, gid); },
                   [&](long p) { return sys(SYS_fchownat, AT_FDCWD, p, uid, gid, 0); });
}
__attribute__((visibility("default"))) int futimens(int fd, const struct timespec times[2]) {
  return fd_change(fd, [&] { return EFUSE_REAL(futimens)(fd, times); },
                   [&](long p) {
                     return sys(SYS_utimensat, AT_FDCWD, p, reinterpret_cast<long>(times), 0);
                   });
}
__attribute__((visibility("default"))) int fsetxattr(int fd, const char* name, const void* value,
                                                    size_t size, int flags) {
  return fd_change(fd, [&] { return EFUSE_REAL(fsetxattr)(fd, name, value, size, flags); },
                   [&](long p) {
                     return sys(SYS_setxattr, p, reinterpret_cast<long>(name),
                                reinterpret_cast<long>(value), static_cast<long>(size), flags);
                   });
}
__attribute__((visibility("default"))) int fremovexattr(int fd, const char* name) {
  return fd_change(fd, [&] { return EFUSE_REAL(fremovexattr)(fd, name); },
                   [&](long p) { return sys(SYS_removexattr, p, reinterpret_cast<long>(name)); });
}

// What only the mount can say about a memory mount's data file: its xattrs (ACLs among
// them) and its file system. Other descriptors: libc's calls as they are.
__attribute__((visibility("default"))) ssize_t fgetxattr(int fd, const char* name, void* value,
                                                        size_t size) {
  int c = companion_for(fd, -1);
  if (c == -2) return -1;
  if (c < 0) return EFUSE_REAL(fgetxattr)(fd, name, value, size);
  return sys(SYS_getxattr, ProcFd(c).arg(), reinterpret_cast<long>(name),
             reinterpret_cast<long>(value), static_cast<long>(size));
}
__attribute__((visibility("default"))) ssize_t flistxattr(int fd, char* list, size_t size) {
  int c = companion_for(fd, -1);
  if (c == -2) return -1;
  if (c < 0) return EFUSE_REAL(flistxattr)(fd, list, size);
  return sys(SYS_listxattr, ProcFd(c).arg(), reinterpret_cast<long>(list), static_cast<long>(size));
}
extern "C++" template <typename Real, typename Buf>
int fs_info(Real real, int fd, Buf* buf) {
  int c = companion_for(fd, -1);
  return c == -2 ? -1 : real(c >= 0 ? c : fd, buf);
}
__attribute__((visibility("default"))) int fstatfs(int fd, struct statfs* buf) {
  return fs_info(EFUSE_REAL(fstatfs), fd, buf);
}
__attribute__((visibility("default"))) int fstatfs64(int fd, struct statfs64* buf) {
  return fs_info(EFUSE_REAL(fstatfs64), fd, buf);
}
__attribute__((visibility("default"))) int fstatvfs(int fd, struct statvfs* buf) {
  return fs_info(EFUSE_REAL(fstatvfs), fd, buf);
}
__attribute__((visibility("default"))) int fstatvfs64(int fd, struct statvfs64* buf) {
  return fs_info(EFUSE_REAL(fstatvfs64), fd, buf);
}

// ---- stat ------------------------------------------------------------------------------
__attribute__((visibility("default"))) int stat(const char* path, struct stat* st) {
  return fstatat_common(AT_FDCWD, path, st, 0);
}
__attribute__((visibility("default"))) int stat64(const char* path, struct stat64* st) {
  return fstatat_common(AT_FDCWD, path, reinterpret_cast<struct stat*>(st), 0);
}
__attribute__((visibility("default"))) int lstat(const char* path, struct stat* st) {
  return fstatat_common(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW);
}
__attribute__((visibility("default"))) int lstat64(const char* path, struct stat64* st) {
  return fstatat_common(AT_FDCWD, path, reinterpret_cast<struct stat*>(st), AT_SYMLINK_NOFOLLOW);
}
__attribute__((visibility("default"))) int fstatat(int dirfd, const char* path, struct stat* st,
                                                  int flags) {
  return fstatat_common(dirfd, path, st, flags);
}
__attribute__((visibility("default"))) int fstatat64(int dirfd, const char* path,
                                                    struct stat64* st, int flags) {
  return fstatat_common(dirfd, path, reinterpret_cast<struct stat*>(st), flags);
}
__attribute__((visibility("default"))) int fstat(int fd, struct stat* st) {
  return fstat_common(fd, st);
}
__attribute__((visibility("default"))) int fstat64(int fd, struct stat64* st) {
  return fstat_common(fd, reinterpret_cast<struct stat*>(st));
}

__attribute__((visibility("default"))) int statx(int dirfd, const char* path, int flags,
                                                unsigned mask, struct statx* sx) {
  Guard g;
  if (g.entered && (flags & AT_EMPTY_PATH) && path != nullptr && path[0] == '\0') {
    int c = companion_for(dirfd, EFUSE_IOP_stat);
    if (c != -1) return c < 0 ? -1 : EFUSE_REAL(statx)(c, path, flags, mask, sx);
    uint32_t e = fd_entry(dirfd);
    if (e & kFdLibrary) {
      EFUSE_DEAD_CHECK(dirfd, EFUSE_IOP_stat);
      if (mask & ~kServedStatxMask) return EFUSE_REAL(statx)(dirfd, path, flags, mask, sx);
      int rc = EFUSE_REAL(statx)(dirfd, path, flags, mask, sx);
      if (rc == 0 && fd_same(dirfd, makedev(sx->stx_dev_major, sx->stx_dev_minor), sx->stx_ino))
        rewrite_statx(mount_at(fd_mount(e)), false, sx);
      else if (rc == 0)
        fd_clear(dirfd);
      return rc;
    }
    if (e & kFdKernel) count(mount_at(fd_mount(e)), EFUSE_IOP_stat, false);
    return EFUSE_REAL(statx)(dirfd, path, flags, mask, sx);
  }
  Resolved r;
  if (!g.entered || !resolve(dirfd, path, &r))
    return EFUSE_REAL(statx)(dirfd, path, flags, mask, sx);
  constexpr int kSync = AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC;
  if (!(mask & ~kServedStatxMask) && !(flags & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | kSync)) &&
      servable_here(r, AT_EACCESS)) {
    if (r.single_name) {  // as in stat_resolved: one statx without following
      int saved = errno;
      long rc = sys(SYS_statx, r.at_fd, reinterpret_cast<long>(r.at_path),
                    AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, mask | STATX_BASIC_STATS,
                    reinterpret_cast<long>(sx));
      if (rc != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        count(r.mount, EFUSE_IOP_stat, true);
        return -1;
      }
      errno = saved;
      if (rc == 0 && !(S_ISLNK(sx->stx_mode) && !(flags & AT_SYMLINK_NOFOLLOW))) {
        rewrite_statx(r.mount, r.is_root, sx);
        count(r.mount, EFUSE_IOP_stat, true);
        return 0;
      }
    }
    int pfd = open_path(r, flags & AT_SYMLINK_NOFOLLOW);
    if (pfd == -1) {
      count(r.mount, EFUSE_IOP_stat, true);
      return -1;
    }
    if (pfd >= 0) {
      int saved = errno;
      long rc = sys(SYS_statx, pfd, reinterpret_cast<long>(""), AT_EMPTY_PATH,
                    mask | STATX_BASIC_STATS, reinterpret_cast<long>(sx));
      close_quiet(pfd);
      errno = saved;
      if (rc == 0) {
        rewrite_statx(r.mount, r.is_root, sx);
        count(r.mount, EFUSE_IOP_stat, true);
        return 0;
      }
    }
  }
  count(r.mount, EFUSE_IOP_stat, false);
  return EFUSE_REAL(statx)(dirfd, path, flags, mask, sx);
}

// ---- access ----------------------------------------------------------------------------
static int faccessat_common(int dirfd, const char* path, int mode, int flags) {
  Guard g;
  Resolved r;
  if (!g.entered || !resolve(dirfd, path, &r)) return EFUSE_REAL(faccessat)(dirfd, path, mode, flags);
  bool ro_write = (mode & W_OK) && (r.mount->flags & EFUSE_IR_READ_ONLY);  // EROFS: the kernel's
  if (!ro_write && !(flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW)) &&
      servable_here(r, flags & AT_EACCESS)) {
    int pfd = open_path(r, flags & AT_SYMLINK_NOFOLLOW);
    if (pfd == -1) {
      count(r.mount, EFUSE_IOP_access, true);
      return -1;
    }
    if (pfd >= 0) {
      int saved = errno;
      long rc = sys(SYS_faccessat2, pfd, reinterpret_cast<long>(""), mode,
                    (flags & AT_EACCESS) | AT_EMPTY_PATH);
      int err = errno;
      close_quiet(pfd);
      if (rc == 0 || err == EACCES) {
        errno = rc == 0 ? saved : err;
        count(r.mount, EFUSE_IOP_access, true);
        return rc == 0 ? 0 : -1;
      }
      errno = saved;
    }
  }
  count(r.mount, EFUSE_IOP_access, false);
  return EFUSE_REAL(faccessat)(dirfd, path, mode, flags);
}
__attribute__((visibility("default"))) int access(const char* path, int mode) {
  return faccessat_common(AT_FDCWD, path, mode, 0);
}
__attribute__((visibility("default"))) int faccessat(int dirfd, const char* path, int mode,
                                                    int flags) {
  return faccessat_common(dirfd, path, mode, flags);
}

// A stream over a descriptor (fdopen): fclose closes it inside libc.
__attribute__((visibility("default"))) int fclose(FILE* f) {
  if (f != nullptr) {
    int fd = fileno(f);
    uint32_t e = fd_entry(fd);
    if (e != 0) {
      fd_clear(fd);
      count(mount_at(fd_mount(e)), EFUSE_IOP_close, (e & kFdLibrary) != 0);
    }
  }
  return EFUSE_REAL(fclose)(f);
}

// Descriptors inherited across exec that the library (or the kernel path) opened.
__attribute__((constructor)) static void efuse_intercept_init() {
  Guard g;
  if (g.entered) adopt_inherited();
}

}  // extern "C"

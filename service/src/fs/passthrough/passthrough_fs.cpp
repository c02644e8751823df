// Passthrough backend: entries, attributes and namespace operations.
#include "fs/passthrough/passthrough_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>

#include "common/log.h"
#include "fs/passthrough/creds.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {

PassthroughFs::PassthroughFs(std::string source, const Policy& policy)
    : source_(std::move(source)), root_(geteuid() == 0) {
  set_policy(policy);
  int fd = ::open(source_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    throw std::system_error(errno, std::generic_category(), "cannot open source " + source_);
  struct stat st;
  if (fstatat(fd, "", &st, AT_EMPTY_PATH) != 0) {
    int e = errno;
    ::close(fd);
    throw std::system_error(e, std::generic_category(), "cannot stat source " + source_);
  }
  inodes_.set_root(fd, st);
  if (!inodes_.handles())
    LOG_INFO("%s: no file handles here (%s%s): every inode the kernel caches keeps an open "
             "descriptor, so RLIMIT_NOFILE bounds the tree the kernel can cache",
             source_.c_str(), strerror(inodes_.handles_errno()),
             inodes_.handles_errno() == EPERM ? "; open_by_handle_at needs CAP_DAC_READ_SEARCH "
                                                "and must pass any seccomp filter"
                                              : "");
}

PassthroughFs::~PassthroughFs() {
  for (auto& [fh, fd] : restored_fds_)
    if (fd >= 0) ::close(fd);
  for (auto& [key, fd] : library_marks_) ::close(fd);
}

void PassthroughFs::init(const Capabilities& caps) { caps_ = caps; }

void PassthroughFs::set_invalidator(Invalidator* inv) {
  inv_.store(inv);
  std::shared_ptr<Watcher> w;
  if (inv != nullptr) {
    w = std::make_shared<Watcher>(inodes_, *inv, watch_counters_, source_);
    if (auto root = inodes_.get(1)) w->watch(*root);
    for (const auto& inode : inodes_.all())
      if (S_ISDIR(inode->type)) w->watch(*inode);
  }
  auto old = watcher_.exchange(w);
  // In-flight requests may still hold the old watcher; the last one destroys it, and its
  // watches and marks with it. It sends nothing from now on (the invalidator may be gone).
  if (old) {
    old->stop();
    for (const auto& inode : inodes_.all()) inode->watch.store(-1);
  }
}

void PassthroughFs::set_policy(const Policy& p) {
  entry_timeout_.store(p.entry_timeout, std::memory_order_relaxed);
  attr_timeout_.store(p.attr_timeout, std::memory_order_relaxed);
  keep_cache_.store(p.keep_cache, std::memory_order_relaxed);
  passthrough_io_.store(p.passthrough_io, std::memory_order_relaxed);
  adaptive_io_.store(p.adaptive_io, std::memory_order_relaxed);
  io_policy_.set_mode(!p.passthrough_io ? accel::IoMode::Cache
                      : p.adaptive_io   ? accel::IoMode::Auto
                                        : accel::IoMode::Passthrough);
  io_policy_.set_settings(p.adaptive);
  dev_policy_.set_settings(p.adaptive);
  device_path_.store(p.passthrough_io && p.adaptive_io, std::memory_order_relaxed);
}

Result<Entry> PassthroughFs::entry_for(int fd) {
  struct stat st;
  if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
    Errno e = last_errno();
    ::close(fd);
    return e;
  }
  bool created = false;
  auto inode = inodes_.ref(fd, st, &created);
  if (created && S_ISDIR(st.st_mode))
    if (auto w = watcher()) w->watch(*inode);
  if (created && S_ISREG(st.st_mode)) library_mark_new(*inode);
  Entry e;
  e.ino = inode->nodeid;
  e.attr = st;
  e.entry_timeout = cache_timeout(entry_timeout_);
  e.attr_timeout = attr_timeout_of(*inode);
  inode->refreshed_ns.store(steady_ns(), std::memory_order_relaxed);
  replied(*inode, st);
  return e;
}

int64_t PassthroughFs::fresh_since_ns() const {
  double valid = std::min(cache_timeout(entry_timeout_), cache_timeout(attr_timeout_));
  return steady_ns() - static_cast<int64_t>(valid * 0.5e9);
}

bool PassthroughFs::exact_invalidation() const {
  auto w = watcher();
  return w && w->exact();
}

double PassthroughFs::cache_timeout(const std::atomic<double>& configured) const {
  double t = configured.load(std::memory_order_relaxed);
  auto w = watcher();
  if (w && !w->exact()) t = std::min(t, kUnwatchedTimeout);
  return t;
}

double PassthroughFs::attr_timeout_of(const Inode& inode) const {
  return inode.library_writes.load(std::memory_order_relaxed) ? 0 : cache_timeout(attr_timeout_);
}

Result<Entry> PassthroughFs::lookup_at(int dirfd, const char* name) {
  int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return last_errno();
  return entry_for(fd);
}

Result<Entry> PassthroughFs::lookup(const Context&, uint64_t parent, std::string_view name) {
  GET_INODE(dir, parent);
  if (name.size() > NAME_MAX) return Errno{ENAMETOOLONG};
  PIN_FD(dirfd, dir);
  std::string n(name);
  return lookup_at(dirfd, n.c_str());
}

void PassthroughFs::passthrough_refused(uint64_t ino) {
  if (auto inode = inodes_.get(ino)) {
    inode->paged.store(true, std::memory_order_relaxed);
    accel::IoPathPolicy::refused(inode->io);
  }
}

void PassthroughFs::passthrough_registered(uint64_t ino, uint64_t ns) {
  if (auto inode = inodes_.get(ino)) accel::IoPathPolicy::registered(inode->io, ns);
}

void PassthroughFs::forget(uint64_t ino, uint64_t nlookup) {
  auto dropped = inodes_.forget(ino, nlookup);
  if (dropped && S_ISDIR(dropped->type))
    if (auto w = watcher()) w->unwatch(*dropped);
}

PassthroughFs::EntryChange PassthroughFs::note_entry(Inode& dir, std::string_view name,
                                                     int events) {
  if (auto w = watcher()) w->note_entry(dir.nodeid, name, events);
  return EntryChange(dir);
}

BackendStats PassthroughFs::backend_stats() const {
  BackendStats s = inodes_.stats();
  s.listing_drops = listing_drops_.load(std::memory_order_relaxed);
  s.shared_opens = shared_serial_.load(std::memory_order_relaxed);
  if (auto w = watcher()) {
    s.watched_dirs = w->watched();
    s.watch_fanotify_dirs = w->watched_by_fanotify();
    s.watch_muted_files = w->muted();
  }
  s.watch_events = watch_counters_.events.load(std::memory_order_relaxed);
  s.watch_invalidations = watch_counters_.invalidations.load(std::memory_order_relaxed);
  s.watch_overflows = watch_counters_.overflows.load(std::memory_order_relaxed);
  s.watch_failures = watch_counters_.failures.load(std::memory_order_relaxed);
  return s;
}

accel::IoPathReport PassthroughFs::io_path_report() const {
  accel::IoPathReport r = io_policy_.report();
  r.device = dev_policy_.report();
  return r;
}

Result<Attr> PassthroughFs::getattr(const Context&, uint64_t ino, const uint64_t* fh) {
  GET_INODE(inode, ino);
  struct stat st;
  int rc;
  if (fh != nullptr) {
    CHECK_FH(*fh);
    rc = fstat(fd_of(*fh), &st);
  } else {
    PIN_FD(fd, inode);
    rc = fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }
  if (rc != 0) return last_errno();
  replied(*inode, st);
  io_policy_.attr_fetched(inode->io);  // a refetch after passthrough reads (accel/io_path.h)
  return Attr{st, attr_timeout_of(*inode)};
}

Result<Attr> PassthroughFs::setattr(const Context& ctx, uint64_t ino, const SetattrRequest& s) {
  GET_INODE(inode, ino);
  if (s.has_fh) CHECK_FH(s.fh);
  int fh = s.has_fh ? fd_of(s.fh) : -1;
  PIN_FD(fd, inode);
  if (s.set_mode) {
    int rc = fh >= 0 ? fchmod(fh, s.mode & 07777) : chmod_fd(fd, s.mode & 07777);
    if (rc != 0) return last_errno();
  }
  if (s.set_uid || s.set_gid) {
    uid_t uid = s.set_uid ? s.uid : static_cast<uid_t>(-1);
    gid_t gid = s.set_gid ? s.gid : static_cast<gid_t>(-1);
    if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0)
      return last_errno();
  }
  if (s.set_size) {
    int rc = fh >= 0 ? ftruncate(fh, static_cast<off_t>(s.size))
                     : truncate(ProcPath(fd), static_cast<off_t>(s.size));
    if (rc != 0) return last_errno();
    data_changed(ino);
    if (ctx.kill_suidgid) {
      Status k = kill_suidgid(fd);
      if (!k.ok()) return Errno{k.error()};
    }
  }
  if (s.set_atime || s.set_mtime || s.atime_now || s.mtime_now) {
    struct timespec ts[2];
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_nsec = UTIME_OMIT;
    if (s.atime_now) ts[0].tv_nsec = UTIME_NOW;
    else if (s.set_atime) ts[0] = s.atime;
    if (s.mtime_now) ts[1].tv_nsec = UTIME_NOW;
    else if (s.set_mtime) ts[1] = s.mtime;
    int rc = fh >= 0 ? futimens(fh, ts)
                     : utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (rc != 0) return last_errno();
  }
  return getattr(ctx, ino, nullptr);
}

Result<std::string> PassthroughFs::readlink(const Context&, uint64_t ino) {
  GET_INODE(inode, ino);
  PIN_FD(fd, inode);
  std::string buf(PATH_MAX + 1, '\0');
  ssize_t n = readlinkat(fd, "", buf.data(), buf.size());
  if (n < 0) return last_errno();
  if (static_cast<size_t>(n) >= buf.size()) return Errno{ENAMETOOLONG};
  buf.resize(static_cast<size_t>(n));
  return buf;
}

Result<Entry> PassthroughFs::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                                     std::string_view target) {
  GET_INODE(dir, parent);
  PIN_FD(dirfd, dir);
  std::string n(name), t(target);
  auto change = note_entry(*dir, name);
  {
    CredScope cred(root_, ctx.uid, ctx.gid);
    if (symlinkat(t.c_str(), dirfd, n.c_str()) != 0) return last_errno();
  }
  return lookup_at(dirfd, n.c_str());
}

// With FUSE_DONT_MASK the kernel hands creation the caller's umask instead of applying it,
// because a default ACL on the parent replaces the umask (POSIX.1e). efused runs with umask
// 0, so the backing file system applies the default ACL; the umask is applied here when
// there is none.
mode_t creation_mode(int dirfd, mode_t mode, uint32_t umask) {
  if ((mode & umask & 0777) == 0) return mode;
  if (::getxattr(ProcPath(dirfd), "system.posix_acl_default", nullptr, 0) > 0) return mode;
  return mode & ~static_cast<mode_t>(umask & 0777);
}

int chmod_fd(int fd, mode_t mode) {
#ifndef SYS_fchmodat2
  constexpr long SYS_fchmodat2 = 452;  // the same on every architecture
#endif
  static std::atomic<bool> missing{false};
  if (!missing.load(std::memory_order_relaxed)) {
    if (syscall(SYS_fchmodat2, fd, "", mode, AT_EMPTY_PATH) == 0) return 0;
    if (errno != ENOSYS) return -1;
    missing.store(true, std::memory_order_relaxed);
  }
  return chmod(ProcPath(fd), mode);
}

mode_t privs_to_kill(mode_t mode) {
  if (!S_ISREG(mode)) return 0;
  mode_t kill = mode & S_ISUID;
  if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) kill |= S_ISGID;
  return kill;
}

Status kill_suidgid(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return last_errno();
  mode_t kill = privs_to_kill(st.st_mode);
  if (kill == 0) return {};
  return check(chmod_fd(fd, st.st_mode & 07777 & ~kill));
}

Result<Entry> PassthroughFs::mknod(const Context& ctx, uint64_t parent, std::string_view name,
                                   mode_t mode, dev_t rdev) {
  GET_INODE(dir, parent);
  PIN_FD(dirfd, dir);
  std::string n(name);
  auto change = note_entry(*dir, name);
  mode = creation_mode(dirfd, mode, ctx.umask);
  {
    CredScope cred(root_, ctx.uid, ctx.gid);
    int rc = S_ISDIR(mode) ? mkdirat(dirfd, n.c_str(), mode) : mknodat(dirfd, n.c_str(), mode, rdev);
    if (rc != 0) return last_errno();
  }
  return lookup_at(dirfd, n.c_str());
}

Result<Entry> PassthroughFs::mkdir(const Context& ctx, uint64_t parent, std::string_view name,
                                   mode_t mode) {
  return mknod(ctx, parent, name, (mode & ~S_IFMT) | S_IFDIR, 0);
}

Status PassthroughFs::unlink(const Context&, uint64_t parent, std::string_view name) {
  GET_INODE(dir, parent);
  PIN_FD(dirfd, dir);
  std::string n(name);
  auto change = note_entry(*dir, name);
  return check(unlinkat(dirfd, n.c_str(), 0));
}

Status PassthroughFs::rmdir(const Context&, uint64_t parent, std::string_view name) {
  GET_INODE(dir, parent);
  PIN_FD(dirfd, dir);
  std::string n(name);
  auto change = note_entry(*dir, name);
  return check(unlinkat(dirfd, n.c_str(), AT_REMOVEDIR));
}

Status PassthroughFs::rename(const Context&, uint64_t parent, std::string_view name,
                             uint64_t newparent, std::string_view newname, uint32_t flags) {
  GET_INODE(from, parent);
  GET_INODE(to, newparent);
  PIN_FD(from_fd, from);
  PIN_FD(to_fd, to);
  std::string a(name), b(newname);
  // RENAME_EXCHANGE moves both names: two events on each.
  int events = (flags & RENAME_EXCHANGE) ? 2 : 1;
  auto change_from = note_entry(*from, name, events);
  auto change_to = note_entry(*to, newname, events);
  return check(static_cast<int>(
      syscall(SYS_renameat2, int{from_fd}, a.c_str(), int{to_fd}, b.c_str(), flags)));
}

Result<Entry> PassthroughFs::link(const Context&, uint64_t ino, uint64_t newparent,
                                  std::string_view newname) {
  GET_INODE(inode, ino);
  GET_INODE(dir, newparent);
  PIN_FD(fd, inode);
  PIN_FD(dirfd, dir);
  std::string n(newname);
  auto change = note_entry(*dir, newname);
  int rc = root_ ? linkat(fd, "", dirfd, n.c_str(), AT_EMPTY_PATH)
                 : linkat(AT_FDCWD, ProcPath(fd), dirfd, n.c_str(), AT_SYMLINK_FOLLOW);
  if (rc != 0) return last_errno();
  return lookup_at(dirfd, n.c_str());
}

Result<struct statvfs> PassthroughFs::statfs(const Context&, uint64_t ino) {
  GET_INODE(inode, ino);
  PIN_FD(fd, inode);
  struct statvfs sv;
  if (fstatvfs(fd, &sv) != 0) return last_errno();
  return sv;
}

Status PassthroughFs::access(const Context& ctx, uint64_t ino, int mask) {
  GET_INODE(inode, ino);
  PIN_FD(fd, inode);
  CredScope cred(root_, ctx.uid, ctx.gid, /*keep_dac_override=*/false);
  return check(faccessat(AT_FDCWD, ProcPath(fd), mask, AT_EACCESS));
}

}  // namespace efuse::fs::passthrough

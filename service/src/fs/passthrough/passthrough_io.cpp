// Passthrough backend: open files, data I/O and locks. A file handle is the backing fd.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/log.h"
#include "fs/passthrough/creds.h"
#include "fs/passthrough/device_io.h"
#include "fs/passthrough/passthrough_fs.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {

int backing_open_flags(int flags, bool writeback) {
  // The kernel resolved the path already (O_NOFOLLOW on a symlink fails before we are
  // asked); the backing file is reached through a /proc/self/fd magic link, which
  // O_NOFOLLOW would refuse with ELOOP.
  flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW);
  if (writeback) {
    // The kernel reads pages of write-only files to fill the cache, and it computes
    // appends itself from the cached size.
    if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    flags &= ~O_APPEND;
  }
  return flags | O_CLOEXEC;
}

namespace {

constexpr std::string_view kCapsXattr = "security.capability";

// Read-only opens whose flags change nothing about reading may share one description.
bool shareable(int flags) {
  // The kernel sets O_LARGEFILE on 64-bit opens; glibc's O_LARGEFILE is 0 there, so this is
  // the kernel's value, which differs by architecture (uapi asm/fcntl.h). Elsewhere a
  // largefile open merely does not share.
#if defined(__aarch64__) || defined(__arm__)
  constexpr int kKernelLargefile = 0400000;
#elif defined(__powerpc__)
  constexpr int kKernelLargefile = 0200000;
#else
  constexpr int kKernelLargefile = 00100000;  // asm-generic: x86, riscv, loongarch, s390
#endif
  constexpr int kHarmless = O_ACCMODE | kKernelLargefile | O_NOCTTY | O_NOFOLLOW | O_CLOEXEC;
  return (flags & O_ACCMODE) == O_RDONLY && (flags & ~kHarmless) == 0;
}

}  // namespace

OpenInfo PassthroughFs::open_info(Inode& inode, int fd, int flags, int64_t now_ns,
                                   const struct stat* known_st) {
  OpenInfo info;
  info.fh = static_cast<uint64_t>(fd);
  const bool writable = (flags & O_ACCMODE) != O_RDONLY;
  if (writable) {
    info.fh |= kWriterFh;
    inode.writers.fetch_add(1);
  }
  std::lock_guard lk(inode.io_mu);
  if (inode.io_opens++ == 0) {
    struct stat st;
    bool known = true;
    if (known_st != nullptr)
      st = *known_st;
    else
      known = fstat(fd, &st) == 0;
    accel::OpenFacts facts;
    facts.size = known ? st.st_size : 0;
    facts.writable = writable;
    // Kernel-direct writes run with efused's credentials (CAP_FSETID), and with
    // FUSE_HANDLE_KILLPRIV_V2 the kernel leaves clearing set-ID bits to us: a set-ID file
    // opened for writing is served, so each WRITE can clear them.
    facts.setid_write = writable && known && privs_to_kill(st.st_mode) != 0;
    facts.passthrough_available = caps_.passthrough && known;
    facts.kernel_opens = kernel_tier_.load(std::memory_order_relaxed);
    inode.io_cached = io_policy_.open(inode.io, facts, now_ns) == accel::IoPath::Cache;
    // Written by a process under the interception library: no page cache that its writes
    // would leave stale. Passthrough reads the backing file; where the kernel cannot (or
    // each WRITE must clear set-ID bits) efused serves every read and write (direct I/O).
    if (inode.io_cached && inode.library_writes.load()) {
      inode.io_cached = false;
      info.direct_io = facts.setid_write || !caps_.passthrough;
    }
  } else {
    io_policy_.joined(inode.io);
    // Joining uncached opens without kernel passthrough: those are direct I/O (above).
    if (!inode.io_cached && !caps_.passthrough) info.direct_io = true;
  }
  if (inode.io_cached) {
    inode.paged.store(true, std::memory_order_relaxed);
    // Pages may stay across opens when outside changes are invalidated exactly (or the
    // operator asked for it regardless).
    info.keep_cache = keep_cache_.load(std::memory_order_relaxed) || exact_invalidation();
  } else if (!info.direct_io) {
    info.passthrough_fd = fd;
  }
  return info;
}

Result<OpenInfo> PassthroughFs::open(const Context& ctx, uint64_t ino, int flags) {
  auto info = open_file(ctx, ino, flags);
  if (info.ok()) {
    if (has_restored_.load(std::memory_order_relaxed)) avoid_restored(*info);
    handles_.add(info->fh);
    if (state_.load(std::memory_order_relaxed) != nullptr)
      record_open(info->fh, ino, flags, info->passthrough_fd < 0);
  }
  return info;
}

Result<OpenInfo> PassthroughFs::open_file(const Context& ctx, uint64_t ino, int flags) {
  GET_INODE(inode, ino);
  bool share = S_ISREG(inode->type) && shareable(flags);
  PathFd path_fd = inode->pin(share ? Inode::Reopen::kReadable : Inode::Reopen::kPath);
  if (!path_fd.ok()) return path_fd.error();
  inode->opens.fetch_add(1);
  if (share) {
    // The descriptor stays while the inode has opens (eviction skips it).
    int fd = inode->readable_fd(path_fd);
    if (fd >= 0) {
      OpenInfo info = open_info(*inode, fd, flags, ctx.now_or_clock());
      uint64_t serial = shared_serial_.fetch_add(1, std::memory_order_relaxed) & 0x3fffffffu;
      info.fh = kSharedFh | serial << 32 | static_cast<uint32_t>(fd);
      return info;
    }
    // Not readable by efused (or out of descriptors): a private open says why.
  }
  int fd = ::open(ProcPath(path_fd), backing_open_flags(flags, caps_.writeback_cache));
  if (fd < 0) {
    inode->opens.fetch_sub(1);
    return last_errno();
  }
  if (ctx.kill_suidgid) (void)kill_suidgid(fd);  // O_TRUNC by a caller without CAP_FSETID
  OpenInfo info = open_info(*inode, fd, flags, ctx.now_or_clock());
  // A writable open joining passthrough opens (the first open chose passthrough: it was
  // read-only, or the bits were set later) writes kernel-direct with efused's CAP_FSETID,
  // which keeps set-ID bits. Clear them now, as the caller's first write would natively;
  // callers other than root are taken to lack CAP_FSETID.
  if (info.passthrough_fd >= 0 && (flags & O_ACCMODE) != O_RDONLY && ctx.uid != 0)
    (void)kill_suidgid(fd);
  return info;
}

Result<Created> PassthroughFs::create(const Context& ctx, uint64_t parent, std::string_view name,
                                      mode_t mode, int flags) {
  GET_INODE(dir, parent);
  PIN_FD(dirfd, dir);
  std::string n(name);
  int fd;
  auto change = note_entry(*dir, name);
  mode = creation_mode(dirfd, mode, ctx.umask);
  // ctx.kill_suidgid (O_TRUNC) does not apply: CREATE makes a new file, whose set-ID bits
  // are the ones the caller asked for.
  {
    // CREATE comes for a name the kernel believes absent. If a symlink appeared there in the
    // backing tree meanwhile, O_CREAT would follow it, possibly out of the source tree;
    // O_NOFOLLOW makes that ELOOP instead. A file made there meanwhile is opened, or with
    // the caller's O_EXCL (which backing_open_flags() takes away for plain opens) EEXIST.
    CredScope cred(root_, ctx.uid, ctx.gid);
    fd = openat(dirfd, n.c_str(),
                backing_open_flags(flags, caps_.writeback_cache) | O_CREAT | O_NOFOLLOW |
                    (flags & O_EXCL),
                mode & 07777);
  }
  if (fd < 0) return last_errno();
  auto e = lookup_at(dirfd, n.c_str());
  if (!e.ok()) {
    ::close(fd);
    return Errno{e.error()};
  }
  auto inode = inodes_.get(e->ino);
  if (!inode) {
    ::close(fd);
    return Errno{ESTALE};
  }
  // A file O_EXCL made just now has no security.capability (nothing sets it at creation),
  // which the kernel asks for before its first write.
  if ((flags & O_EXCL) && S_ISREG(e->attr.st_mode) && exact_invalidation())
    note_caps_absent(*inode, inode->xattr_seq.load(), ctx.now_or_clock());
  inode->opens.fetch_add(1);
  Created c;
  c.entry = *e;
  c.open = open_info(*inode, fd, flags, ctx.now_or_clock(), &e->attr);  // stat of lookup_at
  if (has_restored_.load(std::memory_order_relaxed)) avoid_restored(c.open);
  handles_.add(c.open.fh);
  if (state_.load(std::memory_order_relaxed) != nullptr)
    record_open(c.open.fh, inode->nodeid, flags & ~(O_CREAT | O_EXCL | O_TRUNC),
                c.open.passthrough_fd < 0);
  return c;
}

void PassthroughFs::served(uint64_t ino, int64_t start) {
  if (auto inode = inodes_.get(ino))
    accel::IoPathPolicy::served(inode->io, static_cast<uint64_t>(steady_ns() - start));
}

uint32_t PassthroughFs::direct_alignment(dev_t dev, int fd) {
  std::lock_guard lk(direct_mu_);
  auto it = direct_align_.find(dev);
  if (it != direct_align_.end()) return it->second;
  uint32_t align = direct_io_alignment(fd);
  direct_align_.emplace(dev, align);
  if (align == 0 && !direct_none_logged_) {
    direct_none_logged_ = true;
    LOG_INFO("backing file system of %s does no direct I/O (tmpfs or similar): reads efused "
             "serves stay on the kernel path (buffered)", source_.c_str());
  }
  return align;
}

int PassthroughFs::device_fd(Inode& inode, int fd) {
  uint8_t state = inode.dev_state.load(std::memory_order_acquire);
  if (state == Inode::kDevUndecided) {
    std::lock_guard lk(inode.io_mu);
    state = inode.dev_state.load(std::memory_order_relaxed);
    if (state == Inode::kDevUndecided && inode.io_opens > 0) {
      const int64_t now = steady_ns();
      struct stat st;
      const bool known = fstat(fd, &st) == 0;
      const uint32_t align = known ? direct_alignment(st.st_dev, fd) : 0;
      // A cache epoch that is a probe of io_path auto does not probe the device path too.
      accel::DevPath path = dev_policy_.open(inode.dev_io, known ? st.st_size : 0, align != 0,
                                             now, !inode.io.probe);
      state = Inode::kDevKernel;
      if (path == accel::DevPath::Device) {
        int dfd = ::open(ProcPath(fd), O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) {
          inode.direct_fd.store(dfd, std::memory_order_relaxed);
          inode.direct_align.store(align, std::memory_order_relaxed);
          state = Inode::kDevDevice;
        } else {
          int err = errno;
          dev_policy_.refused(inode.dev_io, now);
          std::lock_guard dlk(direct_mu_);
          direct_align_[st.st_dev] = 0;  // not asked again
          if (!direct_none_logged_) {
            direct_none_logged_ = true;
            LOG_INFO("O_DIRECT open of a file under %s failed (%s): reads efused serves "
                     "stay on the kernel path (buffered)", source_.c_str(), strerror(err));
          }
        }
      }
      inode.dev_state.store(state, std::memory_order_release);
    }
  }
  return state == Inode::kDevDevice ? inode.direct_fd.load(std::memory_order_relaxed) : -1;
}

size_t PassthroughFs::stream_depth(dev_t dev) {
  std::lock_guard lk(direct_mu_);
  auto it = stream_depth_.find(dev);
  if (it != stream_depth_.end()) return it->second;
  const size_t ra = device_readahead_bytes(dev);
  const size_t depth = ra == 0 ? kDefaultDepth : std::clamp(ra, kMinDepth, kMaxDepth);
  stream_depth_.emplace(dev, depth);
  LOG_INFO("device path under %s: sequential reads of files on %u:%u read %zu KiB ahead (%s)",
           source_.c_str(), major(dev), minor(dev), depth >> 10,
           ra == 0 ? "no block device read-ahead found: the default"
                   : "the device's read_ahead_kb");
  return depth;
}

std::shared_ptr<DirectStream> PassthroughFs::device_stream(Inode& inode, int dfd, uint64_t off,
                                                           size_t len) {
  const uint64_t prev_end = inode.dev_next.exchange(off + len, std::memory_order_relaxed);
  std::lock_guard lk(inode.io_mu);
  if (inode.dev_stream || off == 0 || off != prev_end) return inode.dev_stream;
  // The mount's budget spent: no stream, and no fstat at every sequential READ to learn it.
  constexpr size_t kLeast = size_t{DirectStream::kMinWindow} * DirectStream::kChunk;
  if (stream_bytes_.load(std::memory_order_relaxed) + kLeast > kStreamBudget) return nullptr;
  struct stat st;
  if (fstat(dfd, &st) != 0) return nullptr;
  // No deeper than what is left of the file (it may grow: the window then moves with the
  // reader), nor than what the mount's budget has left.
  const uint64_t left = static_cast<uint64_t>(st.st_size) > off ? st.st_size - off : 0;
  size_t want = std::min<uint64_t>(stream_depth(st.st_dev), left + DirectStream::kChunk);
  want = size_t{DirectStream::window_for(want)} * DirectStream::kChunk;
  size_t held = stream_bytes_.load(std::memory_order_relaxed);
  do {
    if (held + kLeast > kStreamBudget) return nullptr;
    want = std::min(want, kStreamBudget - held);
    want -= want % DirectStream::kChunk;
  } while (!stream_bytes_.compare_exchange_weak(held, held + want, std::memory_order_relaxed));
  int err = 0;
  auto s = DirectStream::create(dfd, inode.direct_align.load(std::memory_order_relaxed), want,
                                &err, &stream_counters_);
  if (!s) {
    stream_bytes_.fetch_sub(want, std::memory_order_relaxed);
    std::lock_guard dlk(direct_mu_);
    if (!stream_failure_logged_) {
      stream_failure_logged_ = true;
      LOG_WARN("device path readahead unavailable under %s (%s): one O_DIRECT read per READ",
               source_.c_str(), strerror(err));
    }
    return nullptr;
  }
  streams_.fetch_add(1, std::memory_order_relaxed);
  inode.dev_stream = std::move(s);
  return inode.dev_stream;
}

void PassthroughFs::data_changed(uint64_t ino) {
  if (streams_.load(std::memory_order_relaxed) == 0) return;
  if (auto inode = inodes_.get(ino)) inode->drop_read_ahead();
}

void PassthroughFs::end_device_epoch(Inode& inode, int64_t now_ns) {
  if (inode.dev_stream) {
    const size_t bytes = inode.dev_stream->buffer_bytes();
    inode.dev_stream.reset();  // waits for its reads in flight (the last reader is done)
    streams_.fetch_sub(1, std::memory_order_relaxed);
    stream_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  inode.dev_next.store(0, std::memory_order_relaxed);
  if (inode.dev_state.load(std::memory_order_relaxed) == Inode::kDevUndecided) return;
  dev_policy_.closed(inode.dev_io, now_ns);
  int dfd = inode.direct_fd.exchange(-1, std::memory_order_relaxed);
  if (dfd >= 0) ::close(dfd);
  inode.dev_state.store(Inode::kDevUndecided, std::memory_order_release);
}

Result<size_t> PassthroughFs::read(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                                   std::span<char> buf) {
  CHECK_FH(fh);
  // What the page-cache path costs is measured for io_path: auto (accel/io_path.h), and
  // the device path is chosen by what each way costs (accel/device.h).
  const bool measure = adaptive_io_.load(std::memory_order_relaxed);
  const bool device = device_path_.load(std::memory_order_relaxed);
  std::shared_ptr<Inode> inode = measure || device ? inodes_.get(ino) : nullptr;
  const int64_t start = measure || device ? steady_ns() : 0;
  const int dfd = device && inode ? device_fd(*inode, fd_of(fh)) : -1;
  size_t done = 0;
  if (dfd >= 0) {
    std::shared_ptr<DirectStream> stream = device_stream(*inode, dfd, off, buf.size());
    auto n = stream ? stream->read(buf, off)
                    : direct_read(dfd, buf, off, inode->direct_align.load(std::memory_order_relaxed));
    if (!n.ok()) return Errno{n.error()};
    done = *n;
  } else {
    // FUSE takes a short read for end of file: fill the buffer unless the file really ends.
    while (done < buf.size()) {
      ssize_t n = pread(fd_of(fh), buf.data() + done, buf.size() - done,
                        static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        if (done > 0) break;
        return last_errno();
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
  }
  if (inode) {
    const uint64_t ns = static_cast<uint64_t>(steady_ns() - start);
    // A read the device engine is probing with costs what the probe costs, not what the
    // cache path does: cache or passthrough is weighed on the request alone then.
    const bool device_probe = dfd >= 0 && inode->dev_io.reason == accel::DevReason::Probe;
    if (measure) accel::IoPathPolicy::served(inode->io, device_probe ? 0 : ns);
    if (device) accel::DevicePolicy::served(inode->dev_io, done, ns);
  }
  return done;
}

Result<size_t> PassthroughFs::write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t off,
                                    std::span<const char> data) {
  CHECK_FH(fh);
  const bool measure = adaptive_io_.load(std::memory_order_relaxed);
  const int64_t start = measure ? steady_ns() : 0;
  if (ctx.kill_suidgid) {
    Status k = kill_suidgid(fd_of(fh));
    if (!k.ok()) return Errno{k.error()};
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = pwrite(fd_of(fh), data.data() + done, data.size() - done,
                       static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0) break;
      return last_errno();
    }
    done += static_cast<size_t>(n);
  }
  if (measure) served(ino, start);
  data_changed(ino);
  return done;
}

Status PassthroughFs::flush(const Context&, uint64_t ino, uint64_t fh, uint64_t lock_owner) {
  CHECK_FH(fh);
  // close() of a descriptor releases the caller's POSIX locks on the file.
  if (auto inode = inodes_.get(ino)) {
    std::lock_guard lk(inode->lock_mu);
    auto it = inode->lock_fds.find(lock_owner);
    if (it != inode->lock_fds.end()) {
      ::close(it->second.fd);
      inode->lock_fds.erase(it);
    }
  }
  // Closing a duplicate reports deferred write errors (NFS and the like) without giving up
  // fh. A shared handle is read-only: it has none.
  if (is_shared(fh)) return {};
  int dupfd = dup(fd_of(fh));
  if (dupfd < 0) return last_errno();
  return check(::close(dupfd));
}

Status PassthroughFs::release(const Context& ctx, uint64_t ino, uint64_t fh) {
  // Unknown: nothing was opened under this handle, so nothing is closed or counted down.
  if (!handles_.remove(fh)) return Errno{EBADF};
  // A handle of a previous efused's closes the descriptor restore_state() opened for it.
  const bool restored = (has_restored_.load(std::memory_order_relaxed) ||
                         state_.load(std::memory_order_relaxed) != nullptr) &&
                        forget_open(fh);
  auto inode = inodes_.get(ino);
  if (inode) {
    if (is_shared(fh)) {
      // Closing its own description drops the open's flock, as closing it natively would.
      std::lock_guard lk(inode->lock_mu);
      auto it = inode->flock_fds.find(fh);
      if (it != inode->flock_fds.end()) {
        ::close(it->second);
        inode->flock_fds.erase(it);
      }
    }
    std::lock_guard lk(inode->io_mu);
    if (inode->io_opens > 0 && --inode->io_opens == 0) {
      const int64_t now = ctx.now_or_clock();
      io_policy_.closed(inode->io, now);
      end_device_epoch(*inode, now);
    }
  }
  if (!is_shared(fh) && !restored) ::close(fd_of(fh));
  if (inode && is_writer(fh) && inode->writers.fetch_sub(1) == 1 && inode->muted.load())
    if (auto w = watcher()) w->closed(*inode);
  // Last: with no opens left the inode's descriptor may be evicted.
  if (inode) inode->opens.fetch_sub(1);
  return {};
}

Status PassthroughFs::fsync(const Context&, uint64_t, uint64_t fh, bool datasync) {
  CHECK_FH(fh);
  int fd = fd_of(fh);
  return check(datasync ? fdatasync(fd) : ::fsync(fd));
}

Status PassthroughFs::fallocate(const Context&, uint64_t ino, uint64_t fh, int mode,
                                uint64_t off, uint64_t len) {
  CHECK_FH(fh);
  Status s = check(::fallocate(fd_of(fh), mode, static_cast<off_t>(off), static_cast<off_t>(len)));
  data_changed(ino);  // a punched hole reads as zeros now
  return s;
}

Result<uint64_t> PassthroughFs::lseek(const Context&, uint64_t, uint64_t fh, uint64_t off,
                                      int whence) {
  CHECK_FH(fh);
  off_t r = ::lseek(fd_of(fh), static_cast<off_t>(off), whence);
  if (r < 0) return last_errno();
  return static_cast<uint64_t>(r);
}

Result<size_t> PassthroughFs::copy_file_range(const Context&, uint64_t, uint64_t fh_in,
                                              uint64_t off_in, uint64_t ino_out, uint64_t fh_out,
                                              uint64_t off_out, uint64_t len, uint64_t flags) {
  CHECK_FH(fh_in);
  CHECK_FH(fh_out);
  loff_t in = static_cast<loff_t>(off_in), out = static_cast<loff_t>(off_out);
  ssize_t n = ::copy_file_range(fd_of(fh_in), &in, fd_of(fh_out), &out,
                                len, static_cast<unsigned>(flags));
  if (n < 0) return last_errno();
  data_changed(ino_out);
  return static_cast<size_t>(n);
}

// ---- locks ---------------------------------------------------------------------------------

// POSIX locks belong to a lock owner (a process's file table), not to an open file. Each
// owner gets its own open file description of the backing file and locks it with OFD locks,
// which then conflict exactly as the owners' POSIX locks do, also with processes working on
// the backing tree directly. flush() of the owner drops them, as close() does.
Result<int> PassthroughFs::lock_fd(Inode& inode, uint64_t fh, uint64_t owner) {
  auto it = inode.lock_fds.find(owner);
  if (it != inode.lock_fds.end()) return it->second.fd;
  int fd = ::open(ProcPath(fd_of(fh)), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int accmode = fcntl(fd_of(fh), F_GETFL);
    if (accmode < 0) return last_errno();
    fd = ::open(ProcPath(fd_of(fh)), (accmode & O_ACCMODE) | O_CLOEXEC);
    if (fd < 0) return last_errno();
  }
  inode.lock_fds[owner].fd = fd;
  return fd;
}

static struct flock to_flock(const Lock& l) {
  struct flock f {};
  f.l_type = static_cast<short>(l.type);
  f.l_whence = SEEK_SET;
  f.l_start = static_cast<off_t>(l.start);
  // FUSE ranges are inclusive with OFFSET_MAX for "to the end"; flock uses a length, 0 = EOF.
  f.l_len = l.end >= static_cast<uint64_t>(INT64_MAX) ? 0 : static_cast<off_t>(l.end - l.start + 1);
  return f;
}

Result<Lock> PassthroughFs::getlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner,
                                  const Lock& l) {
  GET_INODE(inode, ino);
  CHECK_FH(fh);
  std::lock_guard lk(inode->lock_mu);
  auto fd = lock_fd(*inode, fh, owner);
  if (!fd.ok()) return Errno{fd.error()};
  struct flock f = to_flock(l);
  if (fcntl(*fd, F_OFD_GETLK, &f) != 0) return last_errno();
  Lock out;
  out.type = static_cast<uint32_t>(f.l_type);
  if (f.l_type != F_UNLCK) {
    out.start = static_cast<uint64_t>(f.l_start);
    out.end = f.l_len == 0 ? static_cast<uint64_t>(INT64_MAX)
                           : static_cast<uint64_t>(f.l_start + f.l_len - 1);
    out.pid = holder_pid(*inode, owner, f);
  }
  return out;
}

// The pid F_GETLK reports: that of our lock owner (not the asker) holding a lock that matches
// the conflict the kernel found. A lock taken on the backing file outside the mount has no
// owner here and reports 0.
uint32_t PassthroughFs::holder_pid(const Inode& inode, uint64_t owner,
                                   const struct flock& conflict) {
  uint64_t start = static_cast<uint64_t>(conflict.l_start);
  uint64_t end = conflict.l_len == 0 ? UINT64_MAX
                                     : static_cast<uint64_t>(conflict.l_start + conflict.l_len - 1);
  for (const auto& [other, lo] : inode.lock_fds) {
    if (other == owner) continue;
    for (const auto& r : lo.ranges)
      if (r.type == static_cast<uint32_t>(conflict.l_type) && r.start <= end && start <= r.end)
        return lo.pid;
  }
  return 0;
}

// Records what a successful SETLK did to the owner's ranges: the new range replaces whatever
// the owner held there (POSIX locks of one owner never conflict, they are replaced).
static void record_lock(Inode::LockOwner& lo, const Lock& l) {
  uint64_t end = l.end >= static_cast<uint64_t>(INT64_MAX) ? UINT64_MAX : l.end;
  std::vector<Inode::LockRange> kept;
  for (const auto& r : lo.ranges) {
    if (r.end < l.start || r.start > end) {
      kept.push_back(r);
      continue;
    }
    if (r.start < l.start) kept.push_back({r.start, l.start - 1, r.type});
    if (r.end > end) kept.push_back({end + 1, r.end, r.type});
  }
  if (l.type != F_UNLCK) kept.push_back({l.start, end, l.type});
  lo.ranges = std::move(kept);
  if (l.type != F_UNLCK) lo.pid = l.pid;
}

Status PassthroughFs::setlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner,
                            const Lock& l) {
  GET_INODE(inode, ino);
  CHECK_FH(fh);
  std::lock_guard lk(inode->lock_mu);
  auto fd = lock_fd(*inode, fh, owner);
  if (!fd.ok()) return Errno{fd.error()};
  struct flock f = to_flock(l);
  if (fcntl(*fd, F_OFD_SETLK, &f) != 0) return last_errno();
  record_lock(inode->lock_fds[owner], l);
  return {};
}

Status PassthroughFs::flock(const Context&, uint64_t ino, uint64_t fh, int op) {
  CHECK_FH(fh);
  if (!is_shared(fh)) return check(::flock(fd_of(fh), op));
  GET_INODE(inode, ino);
  std::lock_guard lk(inode->lock_mu);  // op carries LOCK_NB: this does not block
  auto it = inode->flock_fds.find(fh);
  if (it == inode->flock_fds.end()) {
    if (op & LOCK_UN) return {};  // this open holds none
    int own = ::open(ProcPath(fd_of(fh)), O_RDONLY | O_CLOEXEC);
    if (own < 0) return last_errno();
    it = inode->flock_fds.emplace(fh, own).first;
  }
  return check(::flock(it->second, op));
}

// ---- xattrs --------------------------------------------------------------------------------
// O_PATH handles do not take f*xattr calls; the /proc/self/fd path reaches the same inode.
// Symlinks cannot carry user xattrs on Linux, and the proc path would follow them.

Status PassthroughFs::setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                               std::span<const char> value, int flags) {
  GET_INODE(inode, ino);
  if (S_ISLNK(inode->type)) return Errno{EPERM};
  PIN_FD(fd, inode);
  std::string n(name);
  Status s = check(::setxattr(ProcPath(fd), n.c_str(), value.data(), value.size(), flags));
  inode->xattrs_changed();  // after the change: an absence read before it is not kept
  // The backing file system updated the mode from the ACL as efused, which may keep the
  // set-group-ID bit; the caller could not (FUSE_SETXATTR_ACL_KILL_SGID), so clear it.
  if (s.ok() && ctx.kill_sgid && name == "system.posix_acl_access") {
    struct stat st;
    if (::fstat(fd, &st) != 0) return last_errno();
    if (st.st_mode & S_ISGID) s = check(::chmod(ProcPath(fd), st.st_mode & 07777 & ~S_ISGID));
  }
  return s;
}

bool PassthroughFs::caps_absent(const Inode& inode, uint64_t seq, int64_t now_ns) const {
  if (inode.caps_absent.load() != seq + 1) return false;
  return now_ns - inode.caps_absent_ns.load() <
         static_cast<int64_t>(cache_timeout(attr_timeout_) * 1e9);
}

void PassthroughFs::note_caps_absent(Inode& inode, uint64_t seq, int64_t now_ns) {
  inode.caps_absent_ns.store(now_ns);
  inode.caps_absent.store(seq + 1);
}

Result<size_t> PassthroughFs::getxattr(const Context& ctx, uint64_t ino, std::string_view name,
                                       std::span<char> buf) {
  GET_INODE(inode, ino);
  if (S_ISLNK(inode->type)) return Errno{ENODATA};
  const bool caps = name == kCapsXattr && exact_invalidation();
  const uint64_t seq = caps ? inode->xattr_seq.load() : 0;
  const int64_t now = caps ? ctx.now_or_clock() : 0;
  if (caps && caps_absent(*inode, seq, now)) return Errno{ENODATA};
  PIN_FD(fd, inode);
  std::string n(name);
  ssize_t r = ::getxattr(ProcPath(fd), n.c_str(), buf.data(), buf.size());
  if (r < 0) {
    if (caps && errno == ENODATA) note_caps_absent(*inode, seq, now);
    return last_errno();
  }
  return static_cast<size_t>(r);
}

Result<size_t> PassthroughFs::listxattr(const Context&, uint64_t ino, std::span<char> buf) {
  GET_INODE(inode, ino);
  if (S_ISLNK(inode->type)) return size_t{0};
  PIN_FD(fd, inode);
  ssize_t r = ::listxattr(ProcPath(fd), buf.data(), buf.size());
  if (r < 0) return last_errno();
  return static_cast<size_t>(r);
}

Status PassthroughFs::removexattr(const Context&, uint64_t ino, std::string_view name) {
  GET_INODE(inode, ino);
  if (S_ISLNK(inode->type)) return Errno{EPERM};
  PIN_FD(fd, inode);
  std::string n(name);
  Status s = check(::removexattr(ProcPath(fd), n.c_str()));
  inode->xattrs_changed();
  return s;
}

}  // namespace efuse::fs::passthrough

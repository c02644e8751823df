#include "daemon/mount_instance.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::daemon {

static bool inside(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

std::string check_paths(const MountConfig& c) {
  struct stat st;
  if (stat(c.source.c_str(), &st) != 0) return "source " + c.source + ": " + strerror(errno);
  if (!S_ISDIR(st.st_mode)) return "source " + c.source + " is not a directory";
  if (stat(c.mountpoint.c_str(), &st) != 0) {
    // ENOTCONN: a dead FUSE mount left there; start() detaches it.
    if (errno != ENOTCONN) return "mountpoint " + c.mountpoint + ": " + strerror(errno);
  } else if (!S_ISDIR(st.st_mode)) {
    return "mountpoint " + c.mountpoint + " is not a directory";
  }
  if (inside(c.mountpoint, c.source))
    return "mountpoint " + c.mountpoint + " lies inside source " + c.source +
           " (efused would serve its own mount)";
  if (inside(c.source, c.mountpoint))
    return "source " + c.source + " lies inside mountpoint " + c.mountpoint +
           " (efused would serve its own mount)";
  return {};
}

bool needs_remount(const MountConfig& a, const MountConfig& b) {
  return a.mountpoint != b.mountpoint || a.backend != b.backend || a.source != b.source ||
         a.threads != b.threads || a.queue_depth != b.queue_depth ||
         a.transport != b.transport || !(a.options == b.options) ||
         a.cache.writeback != b.cache.writeback || a.bpf_handlers != b.bpf_handlers;
}

static fs::Policy policy_of(const MountConfig& c) {
  fs::Policy p;
  p.entry_timeout = c.cache.entry_timeout;
  p.attr_timeout = c.cache.attr_timeout;
  p.keep_cache = c.cache.keep_cache;
  p.passthrough_io = c.io_path != IoPath::Cache;
  p.adaptive_io = c.io_path == IoPath::Auto;
  return p;
}

MountInstance::MountInstance(MountConfig cfg) : cfg_(std::move(cfg)) {}

MountInstance::~MountInstance() {
  stop();
  if (channel_ && !channel_stopped()) {
    // Workers still blocked on a connection that could not be aborted: they reference the
    // connection, session and backend, so those must outlive them. Only reached on the way out.
    (void)channel_.release();
    (void)conn_.release();
    (void)session_.release();
    (void)fs_.release();
  }
}

const char* MountInstance::transport() const {
  if (!live()) return "";
  return channel_ ? channel_->transport() : "classic";
}

bool MountInstance::channel_stopped() const { return !channel_ || channel_->stopped(); }

bool MountInstance::channel_wait(int ms) { return !channel_ || channel_->wait(ms); }

// io_uring queues when configured and granted; otherwise (or when they cannot be set up
// while the kernel can still go back) classic /dev/fuse workers. A fallback is logged and
// shows as transport="classic" with efuse_mount_transport_fallback 1 in /metrics.
Status MountInstance::start_channel(int fd, bool want_uring, std::string* error) {
  conn_ = std::make_unique<fuse::Connection>(UniqueFd(fd));
  if (!want_uring) {
    channel_ = std::make_unique<fuse::ClassicChannel>(*session_, *conn_, cfg_.threads);
    Status s = channel_->serve_init(error);
    return s.ok() ? channel_->start(error) : s;
  }
  auto uring = std::make_unique<fuse::UringChannel>(*session_, *conn_, cfg_.queue_depth,
                                                    cfg_.threads);
  fuse::UringChannel& u = *uring;
  channel_ = std::move(uring);
  Status s = u.serve_init(error);
  if (!s.ok()) return s;
  std::string why;
  if (u.start(&why).ok()) return {};
  if (!u.classic_fallback_ready()) {
    *error = "io_uring setup failed and the kernel cannot go back to /dev/fuse: " + why;
    return Errno{EIO};
  }
  fallback_reason_ = why;
  LOG_WARN("%s: io_uring transport not in use (%s); serving over /dev/fuse", cfg_.name.c_str(),
           why.c_str());
  return u.start_classic(error);
}

Status MountInstance::start(std::string* error) {
  if (mounted_now_) return Errno{EALREADY};
  std::string problem = check_paths(cfg_);
  if (!problem.empty()) {
    *error = problem;
    return Errno{ENOENT};
  }
  if (cfg_.backend != "passthrough") {
    *error = "backend '" + cfg_.backend + "' is not available";
    return Errno{EINVAL};
  }
  fallback_reason_.clear();
  bool want_uring = false;
  if (cfg_.transport != Transport::Classic) {
    std::string why;
    want_uring = fuse::UringChannel::supported(&why).ok();
    if (!want_uring) {
      fallback_reason_ = why;
      if (cfg_.transport == Transport::Uring)
        LOG_WARN("%s: transport uring unavailable (%s); serving over /dev/fuse",
                 cfg_.name.c_str(), why.c_str());
      else
        LOG_INFO("%s: io_uring unavailable (%s); serving over /dev/fuse", cfg_.name.c_str(),
                 why.c_str());
    }
  }
  try {
    fs_ = std::make_unique<fs::passthrough::PassthroughFs>(cfg_.source, policy_of(cfg_));
  } catch (const std::system_error& e) {
    *error = e.what();
    return Errno{e.code().value()};
  }
  fuse::SessionOptions so;
  so.negative_timeout = cfg_.cache.negative_timeout;
  so.writeback_cache = cfg_.cache.writeback;
  // FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace. It is negotiated
  // even under io_path: cache so a reload can turn it on for new opens without a remount.
  // The kernel does not combine it with the writeback cache; an explicit writeback wins.
  so.passthrough = geteuid() == 0 && !cfg_.cache.writeback;
  so.io_uring = want_uring;
  so.posix_acl = cfg_.options.default_permissions;
  if (cfg_.cache.writeback && cfg_.io_path == IoPath::Passthrough)
    LOG_WARN("%s: writeback cache and passthrough I/O exclude each other; using the writeback "
             "cache", cfg_.name.c_str());
  session_ = std::make_unique<fuse::Session>(*fs_, so);

  fuse::detach_stale(cfg_.mountpoint);
  fuse::MountOptions mo;
  mo.fsname = cfg_.source;
  mo.mountpoint = cfg_.mountpoint;
  mo.allow_other = cfg_.options.allow_other;
  mo.default_permissions = cfg_.options.default_permissions;
  mo.read_only = cfg_.options.read_only;
  auto m = fuse::mount(mo, error);
  if (!m.ok()) return Errno{m.error()};
  mounted_ = *m;
  mounted_now_ = true;

  Status s = start_channel(mounted_.fd, want_uring, error);
  if (!s.ok()) {
    stop(0);
    return s;
  }
  fs_->set_invalidator(this);
  return {};
}

Status MountInstance::inval_inode(uint64_t ino, bool data_too) {
  // off -1: attributes only; off 0, len 0: attributes and every cached page.
  int rc = session_->notify_inval_inode(ino, data_too ? 0 : -1, 0);
  return rc < 0 ? Status(Errno{-rc}) : Status();
}

Status MountInstance::inval_entry(uint64_t parent, std::string_view name) {
  int rc = session_->notify_inval_entry(parent, name);
  return rc < 0 ? Status(Errno{-rc}) : Status();
}

void MountInstance::apply_policy(const MountConfig& cfg) {
  cfg_.cache = cfg.cache;
  cfg_.io_path = cfg.io_path;
  if (fs_) fs_->set_policy(policy_of(cfg_));
  if (session_) session_->set_negative_timeout(cfg_.cache.negative_timeout);
}

bool MountInstance::lost() const { return mounted_now_ && channel_ && channel_stopped(); }

std::vector<const fuse::WorkerStats*> MountInstance::worker_stats() const {
  return channel_ ? channel_->worker_stats() : std::vector<const fuse::WorkerStats*>{};
}

uint64_t MountInstance::requests_served() const {
  uint64_t n = 0;
  for (const fuse::WorkerStats* w : worker_stats()) n += w->requests.load(std::memory_order_relaxed);
  return n;
}

// How long a flush may go without the mount serving a single request before stop() gives
// up on it, and how long it may take at most. Both only keep a wedged mount from holding up
// a stop (the unit's TimeoutStopSec is 30 s); a healthy one finishes long before: the kernel
// keeps a FUSE mount's dirty data to a small share of the dirty limit (strictlimit bdi).
constexpr auto kFlushStall = std::chrono::seconds(10);  // the log message says "10 s"
constexpr auto kFlushLimit = std::chrono::seconds(20);

// Data written through the writeback cache (and through shared mmaps) lives in the kernel's
// page cache of the FUSE inodes until the kernel writes it back, as WRITE requests to us.
// The kernel does that on close(), fsync() and syncfs(), and in the background after a
// while, but not when the mount is detached: if clients keep files open, the unmount is
// lazy and the connection ends (aborted after the grace period, or with efused) with
// their dirty pages unwritten. So before unmounting, syncfs() the mount's root while the
// workers still serve. It runs on a helper thread because a wedged mount would block it:
// the helper owns everything it touches and may outlive this instance (it ends once the
// connection does).
void MountInstance::flush_dirty() {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int err = 0;
    const char* step = "open";
  };
  auto st = std::make_shared<State>();
  const uint64_t writes0 =
      session_->stats()[static_cast<size_t>(fuse::kernel::Opcode::Write)].requests.load();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    std::thread([st, mp = cfg_.mountpoint, dev = mounted_.conn_id] {
      int err = 0;
      const char* step = "open";
      int fd = ::open(mp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      struct stat sb;
      if (fd < 0) {
        err = errno;
      } else if (dev != 0 && fstat(fd, &sb) == 0 &&
                 (major(sb.st_dev) != 0 || minor(sb.st_dev) != dev)) {
        step = "check";  // something else is mounted on top of ours: not ours to sync
        err = EXDEV;
      } else {
        step = "syncfs";
        if (::syncfs(fd) != 0) err = errno;
      }
      if (fd >= 0) ::close(fd);
      std::lock_guard lk(st->mu);
      st->done = true;
      st->err = err;
      st->step = step;
      st->cv.notify_all();
    }).detach();
  } catch (const std::system_error& e) {
    LOG_WARN("%s: cannot flush dirty data before unmounting (no thread: %s)", cfg_.name.c_str(),
             e.what());
    return;
  }
  uint64_t seen = requests_served();
  auto progress = t0;
  std::unique_lock lk(st->mu);
  while (!st->done) {
    st->cv.wait_for(lk, std::chrono::milliseconds(100));
    if (st->done) break;
    auto now = std::chrono::steady_clock::now();
    uint64_t served = requests_served();
    if (served != seen) {
      seen = served;
      progress = now;
    }
    bool stalled = now - progress >= kFlushStall;
    if (stalled || now - t0 >= kFlushLimit) {
      LOG_WARN("%s: flushing dirty data before unmounting: %s after %.0f s; unmounting anyway "
               "(data applications wrote and the kernel has not written back yet may be lost)",
               cfg_.name.c_str(),
               stalled ? "the mount served no request for the last 10 s" : "not done",
               std::chrono::duration<double>(now - t0).count());
      return;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  uint64_t writes =
      session_->stats()[static_cast<size_t>(fuse::kernel::Opcode::Write)].requests.load() - writes0;
  if (st->err != 0 && st->err != EXDEV) {
    LOG_WARN("%s: flushing dirty data before unmounting failed (%s %s: %s)", cfg_.name.c_str(),
             st->step, cfg_.mountpoint.c_str(), strerror(st->err));
  } else if (st->err == EXDEV) {
    LOG_WARN("%s: not flushing before unmounting: another file system is mounted over %s",
             cfg_.name.c_str(), cfg_.mountpoint.c_str());
  } else if (writes > 0) {
    LOG_INFO("%s: flushed dirty data before unmounting (%llu WRITE requests, %.2f s)",
             cfg_.name.c_str(), static_cast<unsigned long long>(writes), secs);
  } else {
    LOG_DEBUG("%s: no dirty data to flush before unmounting (%.3f s)", cfg_.name.c_str(), secs);
  }
}

void MountInstance::stop(int grace_ms) {
  if (!mounted_now_) return;
  mounted_now_ = false;
  if (fs_) fs_->set_invalidator(nullptr);  // joins the watcher before the channel goes
  // Only while the workers serve (not after the connection ended, nor for a mount that
  // never answered INIT: opening its root would wait for INIT).
  if (channel_ && !channel_stopped() && session_ && session_->initialized() &&
      !cfg_.options.read_only)
    flush_dirty();
  auto how = fuse::unmount(cfg_.mountpoint, mounted_.via_fusermount);
  if (how.ok())
    LOG_INFO("%s: %s %s", cfg_.name.c_str(), *how, cfg_.mountpoint.c_str());
  else if (how.error() != EINVAL && how.error() != ENOENT)  // EINVAL: no longer mounted
    LOG_WARN("%s: unmounting %s failed: %s", cfg_.name.c_str(), cfg_.mountpoint.c_str(),
             strerror(how.error()));
  bool has_channel = channel_ != nullptr;
  if (has_channel && !channel_wait(grace_ms)) {
    // Detached but still in use: end the connection so the workers stop; the clients'
    // open files fail with ENOTCONN from now on.
    if (fuse::abort_connection(mounted_.conn_id)) {
      LOG_WARN("%s: still in use after %d ms; connection aborted", cfg_.name.c_str(), grace_ms);
    } else {
      LOG_WARN("%s: still in use; cannot abort connection %u", cfg_.name.c_str(),
               mounted_.conn_id);
    }
    channel_wait(grace_ms);
  }
  if (has_channel && channel_stopped()) {  // joins, closes the fds
    channel_.reset();
    conn_.reset();
  }
}

}  // namespace efuse::daemon

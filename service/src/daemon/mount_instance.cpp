#include "daemon/mount_instance.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <system_error>

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
  return p;
}

MountInstance::MountInstance(MountConfig cfg) : cfg_(std::move(cfg)) {}

MountInstance::~MountInstance() {
  stop();
  if ((classic_ || uring_) && !channel_stopped()) {
    // Workers still blocked on a connection that could not be aborted: they reference the
    // session and backend, so those must outlive them. Only reached on the way out.
    (void)classic_.release();
    (void)uring_.release();
    (void)session_.release();
    (void)fs_.release();
  }
}

const char* MountInstance::transport() const {
  if (!live()) return "";
  return uring_ && uring_->rings_active() ? "uring" : "classic";
}

bool MountInstance::channel_stopped() const {
  if (uring_) return uring_->stopped();
  return !classic_ || classic_->stopped();
}

bool MountInstance::channel_wait(int ms) {
  if (uring_) return uring_->wait(ms);
  return !classic_ || classic_->wait(ms);
}

fuse::Transport& MountInstance::notify_transport() {
  return uring_ ? uring_->notify_transport() : classic_->notify_transport();
}

// io_uring queues when configured and granted; otherwise (or when they cannot be set up
// while the kernel can still go back) classic /dev/fuse workers. A fallback is logged and
// shows as transport="classic" with efuse_mount_transport_fallback 1 in /metrics.
Status MountInstance::start_channel(int fd, bool want_uring, std::string* error) {
  if (!want_uring) {
    classic_ = std::make_unique<fuse::ClassicChannel>(*session_, fd, cfg_.threads);
    Status s = classic_->serve_init(error);
    return s.ok() ? classic_->start(error) : s;
  }
  uring_ = std::make_unique<fuse::UringChannel>(*session_, fd, cfg_.queue_depth, cfg_.threads);
  Status s = uring_->serve_init(error);
  if (!s.ok()) return s;
  std::string why;
  if (uring_->start(&why).ok()) return {};
  if (!uring_->classic_fallback_ready()) {
    *error = "io_uring setup failed and the kernel cannot go back to /dev/fuse: " + why;
    return Errno{EIO};
  }
  fallback_reason_ = why;
  LOG_WARN("%s: io_uring transport not in use (%s); serving over /dev/fuse", cfg_.name.c_str(),
           why.c_str());
  return uring_->start_classic(error);
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

void MountInstance::inval_inode(uint64_t ino, bool data_too) {
  // off -1: attributes only; off 0, len 0: attributes and every cached page.
  (void)session_->notify_inval_inode(notify_transport(), ino, data_too ? 0 : -1, 0);
}

void MountInstance::inval_entry(uint64_t parent, std::string_view name) {
  (void)session_->notify_inval_entry(notify_transport(), parent, name);
}

void MountInstance::apply_policy(const MountConfig& cfg) {
  cfg_.cache = cfg.cache;
  cfg_.io_path = cfg.io_path;
  if (fs_) fs_->set_policy(policy_of(cfg_));
  if (session_) session_->set_negative_timeout(cfg_.cache.negative_timeout);
}

bool MountInstance::lost() const { return mounted_now_ && (classic_ || uring_) && channel_stopped(); }

std::vector<const fuse::WorkerStats*> MountInstance::worker_stats() const {
  if (uring_) return uring_->worker_stats();
  if (classic_) return classic_->worker_stats();
  return {};
}

void MountInstance::stop(int grace_ms) {
  if (!mounted_now_) return;
  mounted_now_ = false;
  if (fs_) fs_->set_invalidator(nullptr);  // joins the watcher before the channel goes
  auto how = fuse::unmount(cfg_.mountpoint, mounted_.via_fusermount);
  if (how.ok())
    LOG_INFO("%s: %s %s", cfg_.name.c_str(), *how, cfg_.mountpoint.c_str());
  else if (how.error() != EINVAL && how.error() != ENOENT)  // EINVAL: no longer mounted
    LOG_WARN("%s: unmounting %s failed: %s", cfg_.name.c_str(), cfg_.mountpoint.c_str(),
             strerror(how.error()));
  bool has_channel = classic_ || uring_;
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
    uring_.reset();
    classic_.reset();
  }
}

}  // namespace efuse::daemon

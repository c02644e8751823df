#include "daemon/mount_instance.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "fs/registry.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"
#include "telemetry/kernel_features.h"

namespace efuse::daemon {

static bool inside(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

std::string check_paths(const MountConfig& c) {
  struct stat st;
  if (c.source.empty()) {
    // A memory mount: nothing to serve from, only the mountpoint to check.
  } else if (stat(c.source.c_str(), &st) != 0) {
    if (errno == ENOENT)
      return "source " + c.source + " does not exist: create that directory or correct the "
             "mount's source";
    return "source " + c.source + ": " + strerror(errno);
  } else if (!S_ISDIR(st.st_mode)) {
    return "source " + c.source + " is not a directory";
  }
  if (stat(c.mountpoint.c_str(), &st) != 0) {
    // ENOTCONN: a dead FUSE mount left there; start() detaches it. ENOENT with
    // create_mountpoint: start() creates it.
    if (errno == ENOENT && !c.create_mountpoint)
      return "mountpoint " + c.mountpoint + " does not exist: create it (mkdir -p " +
             c.mountpoint + ") or set create_mountpoint: true for this mount "
             "(--create-mountpoint with --mount)";
    if (errno != ENOTCONN && errno != ENOENT)
      return "mountpoint " + c.mountpoint + ": " + strerror(errno);
  } else if (!S_ISDIR(st.st_mode)) {
    return "mountpoint " + c.mountpoint + " is not a directory";
  }
  if (c.source.empty()) return {};
  if (inside(c.mountpoint, c.source))
    return "mountpoint " + c.mountpoint + " lies inside source " + c.source +
           " (efused would serve its own mount)";
  if (inside(c.source, c.mountpoint))
    return "source " + c.source + " lies inside mountpoint " + c.mountpoint +
           " (efused would serve its own mount)";
  return {};
}

std::string served(const MountConfig& c) { return c.source.empty() ? c.backend : c.source; }

bool parse_feature_mask(const std::string& text, uint64_t* mask, std::string* error) {
  *mask = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string name = text.substr(start, comma == std::string::npos ? comma : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (name.empty()) continue;
    bool known = false;
    for (const auto& f : telemetry::kKernelFeatures) {
      if (name == f.name) {
        *mask |= f.flag;
        known = true;
      }
    }
    if (!known) {
      std::string names;
      for (const auto& f : telemetry::kKernelFeatures)
        names += std::string(names.empty() ? "" : ", ") + f.name;
      *error = "EFUSE_MASK_KERNEL_FEATURES: unknown feature '" + name + "'; known: " + names;
      return false;
    }
  }
  return true;
}

// mkdir -p with mode 0755 for every directory it creates (efused runs with umask 0).
static std::string make_directories(const std::string& path) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      return "cannot create mountpoint " + path + ": mkdir " + prefix + ": " + strerror(errno);
    if (slash == std::string::npos) return {};
  }
}

bool needs_remount(const MountConfig& a, const MountConfig& b) {
  return a.mountpoint != b.mountpoint || a.backend != b.backend || a.source != b.source ||
         a.threads != b.threads || a.queue_depth != b.queue_depth ||
         a.transport != b.transport || a.kernel_module != b.kernel_module ||
         a.handler_cache_bytes != b.handler_cache_bytes ||
         !(a.options == b.options) || a.cache.writeback != b.cache.writeback;
}

static fs::BackendParams params_of(const MountConfig& c) {
  fs::BackendParams p;
  p.source = c.source;
  p.policy.entry_timeout = c.cache.entry_timeout;
  p.policy.attr_timeout = c.cache.attr_timeout;
  p.policy.keep_cache = c.cache.keep_cache;
  p.policy.passthrough_io = c.io_path != IoPath::Cache;
  p.policy.adaptive_io = c.io_path == IoPath::Auto;
  p.policy.adaptive = c.adaptive;  // the io_path scheduler's settings (passthrough backend)
  p.memory.max_bytes = c.memory.max_bytes;
  p.memory.max_inodes = c.memory.max_inodes;
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
    (void)answers_.release();
    (void)handler_store_.release();
    (void)session_.release();
    (void)fs_.release();
  }
}

const char* MountInstance::tier() const {
  if (!live()) return "";
  return module_tier_ ? kTierModule : kTierStock;
}

bool MountInstance::choose_tier(std::string* error) {
  module_tier_ = false;
  tier_note_.clear();
  if (cfg_.kernel_module == KernelModule::Off) return true;
  std::string why;
  if (geteuid() != 0)
    why = "efused is not root (mounting through /dev/efuse needs mount(2))";
  else
    fuse::efuse_module_loaded(&why);
  if (why.empty()) {
    module_tier_ = true;
    return true;
  }
  if (cfg_.kernel_module == KernelModule::On) {
    *error = "kernel_module: on, but " + why + "; load the module or set kernel_module: auto";
    return false;
  }
  tier_note_ = why;
  LOG_INFO("%s: kernel_module auto: %s; serving on the stock kernel FUSE (/dev/fuse)",
           cfg_.name.c_str(), why.c_str());
  return true;
}

uint32_t handler_opcode(std::string_view name) {
  for (uint32_t op = 1; op < EFUSE_HANDLER_OPCODE_SLOTS; ++op)
    if (name == fuse::opcode_name(op)) return op;
  return 0;
}

std::map<uint32_t, std::string> handler_table(const MountConfig& cfg, const std::string& dir) {
  std::map<uint32_t, std::string> table;
  for (const bpf::ShippedHandler& h : bpf::kShippedHandlers) {
    // The kernel sends ACCESS only where it checks no permission itself: elsewhere the
    // shipped handler would only cost every request one more program run.
    if (h.opcode == static_cast<uint32_t>(fuse::kernel::Opcode::Access) &&
        cfg.options.default_permissions)
      continue;
    table[h.opcode] = bpf::shipped_object(dir, h.object);
  }
  for (const auto& [name, path] : cfg.bpf_handlers)
    if (uint32_t op = handler_opcode(name)) table[op] = path;
  return table;
}

void MountInstance::attach_handlers() {
  if (mounted_.conn_id == 0) {
    tier_note_ = "the mount's FUSE connection is unknown: no handlers attached";
  } else {
    const std::string dir = bpf::default_handler_dir();
    std::string error;
    auto set = bpf::HandlerSet::load(dir, mounted_.conn_id, &error, 0, cfg_.handler_cache_bytes);
    if (set) {
      std::string names, failed;
      for (const auto& [op, path] : handler_table(cfg_, dir)) {
        std::string why;
        if (set->swap(op, path, &why)) {
          names += std::string(names.empty() ? "" : ", ") + fuse::opcode_name(op) + " (" + path + ")";
        } else {
          LOG_WARN("%s: no %s handler: %s", cfg_.name.c_str(), fuse::opcode_name(op), why.c_str());
          failed += std::string(failed.empty() ? "" : "; ") + fuse::opcode_name(op) + ": " + why;
        }
      }
      handler_store_ = std::make_unique<HandlerStore>(std::move(set));
      answers_ = std::make_unique<fuse::KernelAnswers>(*handler_store_);
      // The module takes OPEN answers only where the kernel checks permissions itself.
      answers_->allow_opens(cfg_.options.default_permissions);
      // Answers outlive the kernel's validity while the backend sees every change.
      answers_->set_exact([fs = fs_.get()] { return fs->sees_every_change(); });
      fs_->set_tier(answers_.get());  // before INIT: no entry has been answered yet
      session_->set_kernel_answers(answers_.get());
      // RELEASEs the RELEASE handler takes over are carried out as the requests would be.
      handler_store_->mutable_set().set_release_sink(
          [s = session_.get()](const efuse_release_event& e) {
            s->released_in_kernel(e.nodeid, e.fh, e.flags, e.release_flags);
          });
      tell_handler_opcodes();
      if (!failed.empty()) tier_note_ = "handlers refused: " + failed;
      LOG_INFO("%s: serving through the efuse kernel module (/dev/efuse, connection %u); "
               "eBPF handlers attached: %s", cfg_.name.c_str(), mounted_.conn_id,
               names.empty() ? "none" : names.c_str());
      return;
    }
    tier_note_ = "handlers not attached: " + error;
  }
  LOG_WARN("%s: serving through the efuse kernel module (/dev/efuse) without eBPF handlers: %s",
           cfg_.name.c_str(), tier_note_.c_str());
}

std::string MountInstance::handlers_unavailable() const {
  if (!live()) return "mount '" + cfg_.name + "' is not live";
  if (!module_tier_) {
    std::string why = cfg_.kernel_module == KernelModule::Off
                          ? "kernel_module: off"
                          : "kernel_module: auto, and " + tier_note_;
    return "mount '" + cfg_.name + "' is served on the stock tier (the kernel's own FUSE, "
           "/dev/fuse: " + why + "); eBPF handlers run only on the kernel module tier "
           "(efuse.ko), where the module asks them before a request goes up";
  }
  if (!handler_store_)
    return "mount '" + cfg_.name + "' is on the kernel module tier without handlers: " + tier_note_;
  return {};
}

bool MountInstance::swap_handler(uint32_t opcode, const std::string& path, std::string* error) {
  if (std::string why = handlers_unavailable(); !why.empty()) {
    *error = why;
    return false;
  }
  auto t0 = std::chrono::steady_clock::now();
  if (!handler_store_->mutable_set().swap(opcode, path, error)) {
    LOG_WARN("%s: %s handler not swapped: %s", cfg_.name.c_str(), fuse::opcode_name(opcode),
             error->c_str());
    return false;
  }
  LOG_INFO("%s: %s handler swapped to %s (%.3f s)", cfg_.name.c_str(), fuse::opcode_name(opcode),
           path.c_str(),
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  tell_handler_opcodes();  // a new opcode's requests reach its handler from now on
  return true;
}

bool MountInstance::remove_handler(uint32_t opcode, std::string* error) {
  if (std::string why = handlers_unavailable(); !why.empty()) {
    *error = why;
    return false;
  }
  if (!handler_store_->mutable_set().remove(opcode, error)) return false;
  tell_handler_opcodes();
  LOG_INFO("%s: %s handler removed; those requests go to efused", cfg_.name.c_str(),
           fuse::opcode_name(opcode));
  return true;
}

void MountInstance::tell_handler_opcodes() {
  if (!handler_store_ || mounted_.fd < 0) return;
  uint64_t mask = handler_store_->set().opcode_mask();
  // A module without patch 0018 does not know the ioctl (ENOTTY) and shows handlers every
  // request, as before.
  if (::ioctl(mounted_.fd, EFUSE_DEV_IOC_HANDLER_OPCODES, &mask) != 0 && errno != ENOTTY)
    LOG_WARN("%s: cannot tell the module which opcodes the handlers answer (%s): every "
             "request still runs them", cfg_.name.c_str(), strerror(errno));
}

std::string MountInstance::apply_handlers(const MountConfig& next) {
  if (!live() || !handler_store_) return {};
  const std::string dir = bpf::default_handler_dir();
  auto before = handler_table(cfg_, dir), after = handler_table(next, dir);
  std::string failed;
  for (const auto& [op, path] : after) {
    auto it = before.find(op);
    if (it != before.end() && it->second == path) continue;
    std::string why;
    if (!swap_handler(op, path, &why))
      failed += std::string(failed.empty() ? "" : "; ") + fuse::opcode_name(op) + ": " + why;
  }
  for (const auto& [op, path] : before) {
    std::string why;
    if (!after.count(op) && !remove_handler(op, &why))
      failed += std::string(failed.empty() ? "" : "; ") + fuse::opcode_name(op) + ": " + why;
  }
  return failed;
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
    channel_ = std::make_unique<fuse::ClassicChannel>(*session_, *conn_, cfg_.threads,
                                                      cfg_.workers_max());
    Status s = channel_->serve_init(error);
    return s.ok() ? channel_->start(error) : s;
  }
  // EFUSE_IDLE_QUEUES=0: queue threads stay SCHED_BATCH (docs/adaptive-io.md, comparisons).
  const char* iq = std::getenv("EFUSE_IDLE_QUEUES");
  const bool idle_queues = iq == nullptr || std::strcmp(iq, "0") != 0;
  auto uring = std::make_unique<fuse::UringChannel>(*session_, *conn_, cfg_.queue_depth,
                                                    cfg_.threads, cfg_.workers_max(),
                                                    idle_queues);
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
  if (!fs::backend_known(cfg_.backend)) {
    *error = "backend '" + cfg_.backend + "' is not available";
    return Errno{EINVAL};
  }
  struct stat st;
  if (cfg_.create_mountpoint && stat(cfg_.mountpoint.c_str(), &st) != 0 && errno == ENOENT) {
    *error = make_directories(cfg_.mountpoint);
    if (!error->empty()) return Errno{EACCES};
    LOG_INFO("%s: created mountpoint %s (create_mountpoint: true)", cfg_.name.c_str(),
             cfg_.mountpoint.c_str());
  }
  // A dead mount left by a killed server is detached; a live one is someone's file system.
  fuse::detach_stale(cfg_.mountpoint);
  if (auto held = fuse::fuse_mount_at(cfg_.mountpoint); held && !cfg_.options.stack) {
    *error = "mountpoint " + cfg_.mountpoint + " already carries a live " +
             fuse::describe_holder(*held) + "; stop that server or unmount " + cfg_.mountpoint +
             " first, or set options.stack: true to mount on top of it";
    return Errno{EBUSY};
  }
  bool want_uring = false;
  Status prepared = prepare(&want_uring, error);
  if (!prepared.ok()) return prepared;
  begin_recording();

  fuse::MountOptions mo;
  mo.fsname = served(cfg_);
  mo.mountpoint = cfg_.mountpoint;
  mo.allow_other = cfg_.options.allow_other;
  mo.default_permissions = cfg_.options.default_permissions;
  mo.read_only = cfg_.options.read_only;
  mo.efuse_module = module_tier_;
  auto m = fuse::mount(mo, error);
  if (!m.ok()) return Errno{m.error()};
  mounted_ = *m;
  mounted_now_ = true;
  // Before INIT is answered: no request reaches a handler before its maps are kept.
  if (module_tier_) attach_handlers();

  Status s = start_channel(mounted_.fd, want_uring, error);
  if (!s.ok()) {
    stop(0);
    return s;
  }
  fs_->set_invalidator(this);
  store_descriptors(true);
  note_passthrough();
  report_io_path();
  if (cfg_.intercept) intercept_.publish(cfg_, mounted_.conn_id, fs_.get());
  return {};
}

Status MountInstance::prepare(bool* want_uring_out, std::string* error) {
  fallback_reason_.clear();
  transport_note_.clear();
  passthrough_missing_.clear();
  if (!choose_tier(error)) return Errno{ENODEV};
  auto backend = fs::create_backend(cfg_.backend, params_of(cfg_), error);
  if (!backend.ok()) return Errno{backend.error()};
  fs_ = std::move(*backend);
  // Under systemd with its descriptor store a restart resumes a /dev/fuse connection, but
  // never one that ran FUSE over io_uring (mount_restart.cpp, store_descriptors). So auto
  // keeps clients across restarts and upgrades by default; transport: uring chooses speed.
  const bool restart_keeps_it = store_ != nullptr && store_->enabled() && !module_tier_ &&
                                fs_->can_record_state();
  uint64_t masked = 0;
  if (const char* env = std::getenv("EFUSE_MASK_KERNEL_FEATURES"); env != nullptr && *env) {
    if (!parse_feature_mask(env, &masked, error)) return Errno{EINVAL};
    LOG_WARN("%s: EFUSE_MASK_KERNEL_FEATURES=%s: treating these INIT features as not offered "
             "by the kernel", cfg_.name.c_str(), env);
  }
  bool want_uring = false;
  if (cfg_.transport != Transport::Classic && (masked & fuse::kernel::init::kOverIoUring)) {
    fallback_reason_ = "io_uring masked by EFUSE_MASK_KERNEL_FEATURES";
    LOG_INFO("%s: %s; serving over /dev/fuse", cfg_.name.c_str(), fallback_reason_.c_str());
  } else if (cfg_.transport == Transport::Auto && restart_keeps_it) {
    transport_note_ = "transport auto under systemd: /dev/fuse, so that a restart of efused "
                      "keeps this mount's clients (a FUSE over io_uring connection cannot be "
                      "resumed); transport: uring prefers io_uring, and a restart then "
                      "remounts it";
    LOG_INFO("%s: serving over /dev/fuse (%s)", cfg_.name.c_str(), transport_note_.c_str());
  } else if (cfg_.transport != Transport::Classic) {
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
  fuse::SessionOptions so;
  so.negative_timeout = cfg_.cache.negative_timeout;
  so.statfs_timeout = cfg_.cache.statfs_timeout;
  so.writeback_cache = cfg_.cache.writeback;
  // FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace. It is negotiated
  // even under io_path: cache so a reload can turn it on for new opens without a remount.
  // The kernel does not combine it with the writeback cache; an explicit writeback wins.
  so.passthrough = geteuid() == 0 && !cfg_.cache.writeback;
  so.io_uring = want_uring;
  so.xattr = cfg_.options.xattr;
  // POSIX ACLs are xattrs: without xattrs the kernel checks mode bits only.
  so.posix_acl = cfg_.options.default_permissions && cfg_.options.xattr;
  so.masked_flags = masked;
  so.offload_threads = cfg_.offload_threads;
  so.offload_queue = cfg_.offload_queue;
  // EFUSE_QUEUE_BALANCING=0: FSYNC and FSYNCDIR always inline (docs/adaptive-io.md).
  if (const char* qb = std::getenv("EFUSE_QUEUE_BALANCING"); qb != nullptr && std::strcmp(qb, "0") == 0)
    so.queue_balancing = false;
  if (cfg_.cache.writeback && cfg_.io_path == IoPath::Passthrough)
    LOG_WARN("%s: writeback cache and passthrough I/O exclude each other; using the writeback "
             "cache", cfg_.name.c_str());
  session_ = std::make_unique<fuse::Session>(*fs_, so);
  // The session's own schedulers (FSYNC offloading) take `adaptive:` too; reload applies
  // it again in apply_policy(), beside the backend's reconfigure_backend().
  session_->set_adaptive(cfg_.adaptive);
  *want_uring_out = want_uring;
  return {};
}

void MountInstance::note_passthrough() {
  const uint64_t masked = session_->masked_flags();
  const auto& n = session_->negotiated();
  if (!n.has(fuse::kernel::init::kPassthrough)) {
    if (masked & fuse::kernel::init::kPassthrough)
      passthrough_missing_ = "masked by EFUSE_MASK_KERNEL_FEATURES";
    else if (geteuid() != 0)
      passthrough_missing_ = "efused is not root (FUSE passthrough needs CAP_SYS_ADMIN)";
    else if (cfg_.cache.writeback)
      passthrough_missing_ = "cache.writeback is on (the kernel does not combine the two)";
    else if (!(n.kernel_flags & fuse::kernel::init::kPassthrough))
      passthrough_missing_ = "the kernel does not offer FUSE passthrough (Linux 6.9+, "
                             "CONFIG_FUSE_PASSTHROUGH)";
    else  // offered and allowed: the session grants what the backend asks for of that
      passthrough_missing_ = "backend " + cfg_.backend + " does not use it";
  }
}

std::vector<fs::Metric> MountInstance::backend_metrics() const {
  std::vector<fs::Metric> out = fs_ ? fs_->metrics() : std::vector<fs::Metric>{};
  for (auto& m : intercept_.metrics()) out.push_back(std::move(m));
  return out;
}

const char* MountInstance::effective_io_path() const {
  if (!live() || !session_ || !session_->initialized()) return "";
  return passthrough_missing_.empty() ? to_string(cfg_.io_path) : to_string(IoPath::Cache);
}

void MountInstance::report_io_path() const {
  if (passthrough_missing_.empty() || cfg_.io_path == IoPath::Cache) return;
  if (cfg_.io_path == IoPath::Passthrough)
    LOG_WARN("%s: io_path passthrough requested, but FUSE passthrough is not available: %s; "
             "file data goes through efused (io_path in effect: cache)",
             cfg_.name.c_str(), passthrough_missing_.c_str());
  else
    LOG_INFO("%s: io_path auto: FUSE passthrough not available (%s); io_path in effect: cache",
             cfg_.name.c_str(), passthrough_missing_.c_str());
}

Status MountInstance::inval_inode(uint64_t ino, bool data_too) {
  // The handlers' maps first: the kernel asks again as soon as its cache is invalidated.
  // (The watcher cannot tell an extended attribute's change from another.)
  if (answers_) answers_->node_changed_outside(ino);
  // off -1: attributes only; off 0, len 0: attributes and every cached page.
  int rc = session_->notify_inval_inode(ino, data_too ? 0 : -1, 0);
  return rc < 0 ? Status(Errno{-rc}) : Status();
}

Status MountInstance::inval_listing(uint64_t dir) {
  // Not an outside change: the directory's names are what efused knows (no node_changed_outside).
  if (answers_) answers_->xattrs_changed(dir);
  int rc = session_->notify_inval_inode(dir, 0, 0);
  return rc < 0 ? Status(Errno{-rc}) : Status();
}

Status MountInstance::inval_entry(uint64_t parent, std::string_view name, bool appeared) {
  if (answers_) answers_->name_changed_outside(parent, name);
  int rc = session_->notify_inval_entry(parent, name, appeared);
  return rc < 0 ? Status(Errno{-rc}) : Status();
}

void MountInstance::apply_policy(const MountConfig& cfg) {
  // Stored handler answers carry the timeouts efused sent them with.
  const bool timeouts_changed = cfg_.cache.attr_timeout != cfg.cache.attr_timeout ||
                                cfg_.cache.negative_timeout != cfg.cache.negative_timeout ||
                                cfg_.cache.statfs_timeout != cfg.cache.statfs_timeout;
  if (answers_ && timeouts_changed) answers_->drop_all();
  cfg_.cache = cfg.cache;
  bool io_path_changed = cfg_.io_path != cfg.io_path;
  cfg_.io_path = cfg.io_path;
  cfg_.adaptive = cfg.adaptive;
  cfg_.create_mountpoint = cfg.create_mountpoint;
  cfg_.memory = cfg.memory;
  cfg_.bpf_handlers = cfg.bpf_handlers;  // swapped by apply_handlers() before
  if (cfg_.intercept != cfg.intercept) {
    cfg_.intercept = cfg.intercept;
    if (!cfg_.intercept)
      intercept_.withdraw(true);  // the mount goes on: open files keep working
    else if (live())
      intercept_.publish(cfg_, mounted_.conn_id, fs_.get());
  }
  if (io_path_changed && live()) report_io_path();
  if (fs_) fs::reconfigure_backend(cfg_.backend, *fs_, params_of(cfg_));
  cfg_.max_threads = cfg.max_threads;
  cfg_.offload_threads = cfg.offload_threads;
  cfg_.offload_queue = cfg.offload_queue;
  if (channel_) channel_->set_max_workers(cfg_.workers_max());
  if (session_) {
    session_->set_negative_timeout(cfg_.cache.negative_timeout);
    session_->set_statfs_timeout(cfg_.cache.statfs_timeout);
    session_->set_adaptive(cfg_.adaptive);
    session_->set_offload_limits(cfg_.offload_threads, cfg_.offload_queue);
  }
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
  intercept_.withdraw(false);  // libraries stop serving before the mount goes
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
    if (fuse::abort_connection(mounted_.conn_id, mounted_.efuse_module)) {
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
  // Unmounted for good: systemd closes its copies. The state stays mapped while the backend
  // and session that point into it live (until the instance goes).
  if (store_ != nullptr && state_) store_->remove_all(cfg_.name);
  // The handlers go with the connection; with workers still blocked (the destructor's
  // case) they stay until efused exits, which detaches them.
  if (!has_channel || channel_stopped()) {
    // The release reader carries RELEASEs out through the session and its answers: it
    // delivers what is queued and stops before the answers go.
    if (handler_store_) handler_store_->mutable_set().stop_releases();
    if (session_) session_->set_kernel_answers(nullptr);
    if (fs_) fs_->set_tier(nullptr);
    answers_.reset();
    handler_store_.reset();
  }
}

}  // namespace efuse::daemon

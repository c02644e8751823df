#include "daemon/supervisor.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/log.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"

namespace efuse::daemon {

namespace k = fuse::kernel;

static double now_unix() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

Supervisor::Supervisor(std::string config_path, Config initial)
    : config_path_(std::move(config_path)), config_(std::move(initial)), start_ts_(now_unix()) {
  for (const auto& m : config_.mounts) slots_.push_back(Slot{m, nullptr, "unmounted", "", 0});
}

Supervisor::~Supervisor() { stop_all(); }

Supervisor::Slot* Supervisor::find(const std::string& name) {
  for (auto& s : slots_)
    if (s.cfg.name == name) return &s;
  return nullptr;
}

const Supervisor::Slot* Supervisor::find(const std::string& name) const {
  return const_cast<Supervisor*>(this)->find(name);
}

void Supervisor::start_slot(Slot& slot, std::vector<Event>* events) {
  slot.instance = std::make_unique<MountInstance>(slot.cfg);
  slot.instance->set_fd_store(store_);
  std::string error;
  bool resumed = false;
  if (store_ != nullptr) {
    FdStore::Mount fds = store_->take(slot.cfg.name);
    if (fds.conn || fds.state) {
      resumed = slot.instance->resume(fds, &error).ok();
      if (!resumed) {
        LOG_WARN("%s: not resuming the previous efused's connection: %s; mounting afresh "
                 "(clients of the old mount get ENOTCONN)",
                 slot.cfg.name.c_str(), error.c_str());
        MountInstance::abandon(slot.cfg.name, slot.cfg.mountpoint, std::move(fds), store_);
        slot.instance = std::make_unique<MountInstance>(slot.cfg);
        slot.instance->set_fd_store(store_);
        error.clear();
      }
    }
  }
  if (resumed || slot.instance->start(&error).ok()) {
    slot.state = "mounted";
    slot.error.clear();
    if (!resumed)
      LOG_INFO("%s: serving %s at %s (%u threads)", slot.cfg.name.c_str(),
               served(slot.cfg).c_str(), slot.cfg.mountpoint.c_str(), slot.cfg.threads);
  } else {
    slot.instance.reset();
    slot.state = "failed";
    slot.error = error;
    ++slot.start_failures;
    LOG_ERROR("%s: cannot serve %s at %s: %s", slot.cfg.name.c_str(), served(slot.cfg).c_str(),
              slot.cfg.mountpoint.c_str(), error.c_str());
  }
  events->push_back({slot.cfg.name, slot.state});
}

void Supervisor::stop_slot(Slot& slot, const char* new_state, std::vector<Event>* events) {
  if (slot.instance) {
    slot.instance->stop();
    slot.instance.reset();
  }
  if (slot.state != new_state) {
    slot.state = new_state;
    events->push_back({slot.cfg.name, slot.state});
  }
}

void Supervisor::emit(const std::vector<Event>& events) {
  std::lock_guard lk(listener_mu_);
  if (!listener_) return;
  for (const auto& e : events) listener_(e.name, e.state);
}

size_t Supervisor::start_all() {
  std::vector<Event> events;
  {
    std::lock_guard rl(reload_mu_);
    std::lock_guard lk(mu_);
    for (auto& s : slots_)
      if (!s.instance) start_slot(s, &events);
    // Connections of mounts no longer configured: unmounted, as a reload would.
    if (store_ != nullptr) {
      for (const std::string& name : store_->leftover()) {
        LOG_INFO("%s: no longer configured; unmounting the previous efused's mount", name.c_str());
        MountInstance::abandon(name, "", store_->take(name), store_);
      }
    }
  }
  emit(events);
  return live_count();
}

void Supervisor::detach_all_for_restart() {
  {
    std::lock_guard rl(reload_mu_);
    std::lock_guard lk(mu_);
    for (auto& s : slots_) {
      if (s.instance) {
        s.instance->detach_for_restart();
        s.instance.reset();
      }
    }
  }
}

void Supervisor::stop_all() {
  std::vector<Event> events;
  {
    std::lock_guard rl(reload_mu_);
    std::lock_guard lk(mu_);
    for (auto& s : slots_) stop_slot(s, "unmounted", &events);
  }
  emit(events);
}

size_t Supervisor::check_mounts() {
  std::vector<Event> events;
  {
    std::lock_guard lk(mu_);
    for (auto& s : slots_) {
      if (s.instance && s.instance->lost()) {
        LOG_WARN("%s: %s was unmounted from outside", s.cfg.name.c_str(), s.cfg.mountpoint.c_str());
        s.instance->stop(0);
        s.instance.reset();
        s.state = "failed";
        s.error = "unmounted from outside efused";
        events.push_back({s.cfg.name, s.state});
      }
    }
  }
  emit(events);
  return live_count();
}

size_t Supervisor::live_count() const {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (const auto& s : slots_) n += s.instance && s.instance->live();
  return n;
}

Config Supervisor::config() const {
  std::lock_guard lk(mu_);
  return config_;
}

// ---- reload ---------------------------------------------------------------------------------

Status Supervisor::apply(Config next, std::string* error) {
  std::vector<Event> events;
  Config old;
  std::string handler_failures;
  {
    std::lock_guard lk(mu_);
    old = config_;
    std::vector<Slot> kept;
    // Removed mounts go first, so a mountpoint can move from one name to another.
    for (auto& s : slots_) {
      bool still = false;
      for (const auto& m : next.mounts) still = still || m.name == s.cfg.name;
      if (!still) {
        LOG_INFO("%s: removed from the config; unmounting", s.cfg.name.c_str());
        stop_slot(s, "unmounted", &events);
      }
    }
    for (const auto& m : next.mounts) {
      Slot* cur = find(m.name);
      if (cur == nullptr) {
        Slot s{m, nullptr, "unmounted", "", 0};
        start_slot(s, &events);
        kept.push_back(std::move(s));
        continue;
      }
      Slot s = std::move(*cur);
      bool live = s.instance && s.instance->live();
      if (!(s.cfg == m)) {
        if (needs_remount(s.cfg, m)) {
          LOG_INFO("%s: changed; remounting", m.name.c_str());
          stop_slot(s, "unmounted", &events);
          s.cfg = m;
          start_slot(s, &events);
        } else {
          LOG_INFO("%s: policy changed; applied live", m.name.c_str());
          s.cfg = m;
          if (live) {
            // bpf_handlers: swapped live, one opcode at a time (a refused object leaves the
            // handler before it in place, and the reload reports it).
            std::string failed = s.instance->apply_handlers(m);
            if (!failed.empty())
              handler_failures += (handler_failures.empty() ? "" : "; ") + m.name + ": " + failed;
            s.instance->apply_policy(m);
          } else
            start_slot(s, &events);  // retry a failed mount with what changed
        }
      } else if (!live) {
        start_slot(s, &events);  // retry failed or operator-unmounted mounts
      }
      kept.push_back(std::move(s));
    }
    slots_ = std::move(kept);
    config_ = next;
  }
  emit(events);
  if (applied_hook_) {
    Status hooked = applied_hook_(old, next, error);
    if (!hooked.ok()) return hooked;
  }
  if (!handler_failures.empty()) {
    *error = "handlers not swapped (the ones before stay): " + handler_failures;
    return Errno{EIO};
  }
  return {};
}

void Supervisor::notify_status() const {
  std::string status = "STATUS=" + std::to_string(live_count()) + " of " +
                       std::to_string(mount_count()) + " mount(s) live";
  {
    std::lock_guard lk(mu_);
    if (!metrics_error_.empty()) status += "; " + metrics_error_;
  }
  sd_notify(0, status.c_str());
}

void Supervisor::set_metrics_state(const std::string& listen, const std::string& url,
                                   const std::string& error) {
  if (!error.empty()) metrics_listen_failures_.fetch_add(1);
  std::lock_guard lk(mu_);
  metrics_listen_ = listen;
  metrics_url_ = url;
  metrics_error_ = error;
}

nlohmann::json Supervisor::daemon_status() const {
  std::lock_guard lk(mu_);
  return {{"metrics", {{"listen", metrics_listen_}, {"url", metrics_url_},
                       {"error", metrics_error_}}}};
}

// systemd 252 has no Type=notify-reload; RELOADING=1 still marks the unit "reloading" and
// ExecReload (efusectl reload) returns once this function has replied.
static void notify_reloading() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char buf[80];
  std::snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
                static_cast<unsigned long long>(ts.tv_sec) * 1000000ull +
                    static_cast<unsigned long long>(ts.tv_nsec) / 1000ull);
  sd_notify(0, buf);
}

Status Supervisor::reload(std::string* error) {
  std::lock_guard rl(reload_mu_);
  notify_reloading();
  auto t0 = std::chrono::steady_clock::now();
  last_reload_ts_.store(now_unix());
  Status result;
  if (config_path_.empty()) {
    *error = "no config file to reload (mounts were given on the command line)";
    result = Errno{EINVAL};
  } else {
    try {
      Config next = load_config(config_path_);
      LOG_INFO("reloading %s", config_path_.c_str());
      result = apply(std::move(next), error);
      if (!result.ok()) LOG_ERROR("reload applied, but %s", error->c_str());
    } catch (const ConfigError& e) {
      *error = e.what();
      result = Errno{EINVAL};
    }
  }
  if (!result.ok() && result.error() == EINVAL)
    LOG_ERROR("reload failed, running config kept: %s", error->c_str());
  (result.ok() ? reloads_ok_ : reloads_failed_).fetch_add(1);
  last_reload_ok_.store(result.ok());
  last_reload_duration_.store(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  sd_notify(0, "READY=1");
  notify_status();
  return result;
}

// ---- control::Manager ------------------------------------------------------------------------

std::string Supervisor::version() const { return EFUSE_VERSION; }

nlohmann::json Supervisor::telemetry() const {
  if (telemetry_view_) return telemetry_view_();
  return {{"configured", config().telemetry}, {"level", "off"}, {"up", false},
          {"reason", "not started"}, {"off", ""},
          {"sample_every", config().telemetry_sample_every}};
}

size_t Supervisor::mount_count() const {
  std::lock_guard lk(mu_);
  return slots_.size();
}

// The adaptive I/O path choices of a live mount (efusectl status NAME): per class of opens
// its phase, the path it is committed to and the latest probe's mean cost per open of each
// path; and the decisions so far by path and reason.
static nlohmann::json io_path_view(const accel::IoPathReport& r) {
  nlohmann::json decisions = nlohmann::json::object();
  for (int path = 0; path < 2; ++path)
    for (size_t reason = 0; reason < r.decisions[path].size(); ++reason)
      if (r.decisions[path][reason] != 0)
        decisions[std::string(accel::to_string(static_cast<accel::IoPath>(path))) + "_" +
                  accel::to_string(static_cast<accel::IoReason>(reason))] = r.decisions[path][reason];
  for (int path = 0; path < 2; ++path)
    for (size_t reason = 0; reason < r.device.decisions[path].size(); ++reason)
      if (r.device.decisions[path][reason] != 0)
        decisions[std::string(accel::to_string(static_cast<accel::DevPath>(path))) + "_" +
                  accel::to_string(static_cast<accel::DevReason>(reason))] =
            r.device.decisions[path][reason];
  nlohmann::json classes = nlohmann::json::object();
  // Cache/passthrough classes cost us per open; device classes (kernel/device) us per MiB.
  auto add_class = [&](const std::string& name, const accel::EngineReport& e,
                       std::array<const char*, 2> paths) {
    nlohmann::json v = {
        {"phase", e.phase == accel::Phase::Probe ? "probe" : "commit"},
        {"choice", e.choice < 0 ? "" : paths[e.choice]},
        {"round_left", e.round_left},
    };
    for (int path = 0; path < 2; ++path)
      v[std::string(paths[path]) + "_cost_us"] =
          e.predicted[path] < 0 ? nlohmann::json() : nlohmann::json(e.predicted[path] / 1e3);
    uint64_t probes = 0;
    for (uint64_t n : e.probes) probes += n;
    v["probes"] = probes;
    classes[name] = std::move(v);
  };
  for (const accel::IoClassReport& c : r.classes)
    add_class(c.name, c.engine, {accel::to_string(accel::IoPath::Cache),
                                 accel::to_string(accel::IoPath::Passthrough)});
  for (const auto& [name, e] : r.device.classes)
    add_class(name, e, {accel::to_string(accel::DevPath::Kernel),
                        accel::to_string(accel::DevPath::Device)});
  return {{"decisions", std::move(decisions)}, {"classes", std::move(classes)}};
}

// Requests that may block, per opcode: served inline or offloaded, and why (efusectl status).
static nlohmann::json blocking_view(const accel::OffloadReport& r) {
  nlohmann::json out = nlohmann::json::object();
  for (size_t kind = 0; kind < r.engines.size(); ++kind) {
    const accel::EngineReport& e = r.engines[kind];
    uint64_t n[2] = {0, 0};
    for (int path = 0; path < 2; ++path)
      for (uint64_t v : r.served[kind][path]) n[path] += v;
    if (n[0] + n[1] == 0) continue;
    nlohmann::json v = {
        {"phase", e.phase == accel::Phase::Probe ? "probe" : "commit"},
        {"choice", e.choice < 0 ? "" : accel::to_string(static_cast<accel::Serve>(e.choice))},
        {"inline", n[0]},
        {"offload", n[1]},
    };
    for (int path = 0; path < 2; ++path)
      v[std::string(accel::to_string(static_cast<accel::Serve>(path))) + "_cost_us"] =
          e.predicted[path] < 0 ? nlohmann::json() : nlohmann::json(e.predicted[path] / 1e3);
    out[accel::to_string(static_cast<accel::Blocking>(kind))] = std::move(v);
  }
  return out;
}

nlohmann::json Supervisor::view(const Slot& s) const {
  nlohmann::json j = {
      {"name", s.cfg.name},
      {"mountpoint", s.cfg.mountpoint},
      {"backend", s.cfg.backend},
      {"source", s.cfg.source},
      {"state", s.state},
      {"error", s.error},
      {"transport", s.instance ? s.instance->transport() : ""},
      {"transport_fallback", s.instance ? s.instance->transport_fallback() : ""},
      {"transport_note", s.instance ? s.instance->transport_note() : ""},
      {"io_path", to_string(s.cfg.io_path)},
      {"io_path_effective", s.instance ? s.instance->effective_io_path() : ""},
      {"io_path_note", s.instance ? s.instance->io_path_note() : ""},
      {"kernel_module", to_string(s.cfg.kernel_module)},
      {"tier", s.instance ? s.instance->tier() : ""},
      {"tier_note", s.instance ? s.instance->tier_note() : ""},
      {"handlers", s.instance && s.instance->handlers() != nullptr},
      {"threads", s.cfg.threads},
      {"start_failures", s.start_failures},
      {"resumes", s.instance ? s.instance->resumes() : 0},
      {"resume_note", s.instance ? s.instance->resume_note() : ""},
  };
  const fuse::Session* sess = s.instance ? s.instance->session() : nullptr;
  if (sess != nullptr && sess->initialized()) {
    const auto& n = sess->negotiated();
    j["kernel"] = {
        {"protocol", std::to_string(n.major) + "." + std::to_string(n.minor)},
        {"max_write", n.max_write},
        {"passthrough", n.has(k::init::kPassthrough)},
        {"io_uring", n.has(k::init::kOverIoUring)},
        {"io_uring_offered", (n.kernel_flags & k::init::kOverIoUring) != 0},
        {"writeback_cache", n.has(k::init::kWritebackCache)},
        {"readdirplus", n.has(k::init::kDoReaddirplus)},
        {"parallel_dirops", n.has(k::init::kParallelDirops)},
    };
    uint64_t requests = 0;
    for (const auto& op : sess->stats()) requests += op.requests.load(std::memory_order_relaxed);
    j["requests"] = requests;
    j["io_path_choices"] = io_path_view(s.instance->io_path_report());
    j["queue_balancing"] = blocking_view(sess->offload_report());
    const fuse::OffloadPool::Stats p = sess->offload_pool_stats();
    j["offload_pool"] = {{"depth", p.queued + p.running}, {"queued", p.queued},
                         {"running", p.running},         {"threads", p.threads},
                         {"max_threads", p.max_threads}, {"max_queued", p.max_queued},
                         {"offloaded", p.submitted},     {"rejected", p.rejected}};
    const fuse::WorkerCount w = s.instance->worker_count();
    j["workers"] = {{"running", w.running}, {"min", w.min},         {"max", w.max},
                    {"grown", w.grown},     {"retired", w.retired}};
    // io_uring queues: requests served, and the thread's scheduling class under the
    // starvation guard (docs/adaptive-io.md, "Queue threads").
    nlohmann::json queues = nlohmann::json::array();
    const auto stats = s.instance->worker_stats();
    for (unsigned q = 0; q < s.instance->uring_queues() && q < stats.size(); ++q) {
      const fuse::WorkerStats* ws = stats[q];
      const int cls = ws->sched_class.load(std::memory_order_relaxed);
      queues.push_back({{"queue", q},
                        {"requests", ws->requests.load(std::memory_order_relaxed)},
                        {"class", cls == 1 ? "idle" : cls == 0 ? "batch" : "other"},
                        {"starved", ws->starved.load(std::memory_order_relaxed)}});
    }
    j["queues"] = std::move(queues);
  } else {
    j["kernel"] = nlohmann::json::object();
    j["requests"] = 0;
  }
  return j;
}

nlohmann::json Supervisor::list_mounts() const {
  std::lock_guard lk(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : slots_) out.push_back(view(s));
  return out;
}

Result<nlohmann::json> Supervisor::get_mount(const std::string& name) const {
  std::lock_guard lk(mu_);
  const Slot* s = find(name);
  if (s == nullptr) return Errno{ENOENT};
  return view(*s);
}

Status Supervisor::mount(const std::string& name, std::string* error) {
  std::vector<Event> events;
  Status result;
  {
    std::lock_guard rl(reload_mu_);
    std::lock_guard lk(mu_);
    Slot* s = find(name);
    if (s == nullptr) {
      *error = "no mount named '" + name + "'";
      return Errno{ENOENT};
    }
    if (s->instance && s->instance->live()) {
      *error = name + " is already mounted";
      return Errno{EALREADY};
    }
    start_slot(*s, &events);
    if (s->state != "mounted") {
      *error = s->error;
      result = Errno{EIO};
    }
  }
  emit(events);
  return result;
}

Status Supervisor::unmount(const std::string& name, std::string* error) {
  std::vector<Event> events;
  {
    std::lock_guard rl(reload_mu_);
    std::lock_guard lk(mu_);
    Slot* s = find(name);
    if (s == nullptr) {
      *error = "no mount named '" + name + "'";
      return Errno{ENOENT};
    }
    if (!s->instance || !s->instance->live()) {
      *error = name + " is not mounted";
      return Errno{ENOTCONN};
    }
    LOG_INFO("%s: unmount requested", name.c_str());
    stop_slot(*s, "unmounted", &events);
  }
  emit(events);
  return {};
}

Result<MountInstance*> Supervisor::handler_mount(const std::string& name,
                                                 std::string* error) const {
  const Slot* s = find(name);
  if (s == nullptr) {
    *error = "no mount named '" + name + "'";
    return Errno{ENOENT};
  }
  if (!s->instance || !s->instance->live()) {
    *error = name + " is not mounted";
    return Errno{ENOTCONN};
  }
  if (std::string why = s->instance->handlers_unavailable(); !why.empty()) {
    *error = why;
    return Errno{EOPNOTSUPP};
  }
  return s->instance.get();
}

static Result<uint32_t> opcode_arg(const std::string& opcode, std::string* error) {
  uint32_t op = handler_opcode(opcode);
  if (op == 0) {
    *error = "no handler opcode named '" + opcode.substr(0, 40) + "' (FUSE opcode names, lower "
             "case, as in bpf_handlers: lookup, getattr, ...)";
    return Errno{EINVAL};
  }
  return op;
}

Result<nlohmann::json> Supervisor::list_handlers(const std::string& name,
                                                 std::string* error) const {
  std::lock_guard lk(mu_);
  Result<MountInstance*> m = handler_mount(name, error);
  if (!m.ok()) return Errno{m.error()};
  nlohmann::json out = nlohmann::json::array();
  const std::vector<uint64_t> outcomes = (*m)->handlers()->outcomes();
  for (const bpf::HandlerView& h : (*m)->handlers()->list()) {
    uint64_t answered = 0, fallbacks = 0;
    for (size_t stat = 0; stat < EFUSE_HANDLER_NR_STATS && !outcomes.empty(); ++stat) {
      uint64_t n = outcomes[h.opcode * EFUSE_HANDLER_NR_STATS + stat];
      (stat == EFUSE_HANDLER_STAT_ANSWERED ? answered : fallbacks) += n;
    }
    out.push_back({{"opcode", fuse::opcode_name(h.opcode)},
                   {"loaded", h.prog_id != 0},
                   {"path", h.path},
                   {"prog_id", h.prog_id},
                   {"tag", h.tag},
                   {"abi", h.abi},
                   {"loaded_at", h.loaded_at},
                   {"swaps", h.swaps},
                   {"failed_swaps", h.failed_swaps},
                   {"removals", h.removals},
                   {"run_ns", h.run_ns},
                   {"run_count", h.run_count},
                   {"answered", answered},
                   {"fallbacks", fallbacks}});
  }
  return out;
}

// One handler change on the live mount `name`: under the reload lock and mu_, after the
// mount and the opcode are checked; `change` returns false with *error filled on refusal.
template <typename Change>
Status Supervisor::change_handler(const std::string& name, const std::string& opcode,
                                  std::string* error, int refused, Change change) {
  std::lock_guard rl(reload_mu_);
  std::lock_guard lk(mu_);
  Result<MountInstance*> m = handler_mount(name, error);
  if (!m.ok()) return Errno{m.error()};
  Result<uint32_t> op = opcode_arg(opcode, error);
  if (!op.ok()) return Errno{op.error()};
  if (!change(**m, *op)) return Errno{refused};
  return {};
}

Status Supervisor::swap_handler(const std::string& name, const std::string& opcode,
                                const std::string& path, std::string* error) {
  if (path.empty() || path[0] != '/') {
    *error = "handler path '" + path.substr(0, 200) + "' is not absolute";
    return Errno{EINVAL};
  }
  return change_handler(name, opcode, error, ECANCELED, [&](MountInstance& m, uint32_t op) {
    return m.swap_handler(op, path, error);
  });
}

Status Supervisor::remove_handler(const std::string& name, const std::string& opcode,
                                  std::string* error) {
  return change_handler(name, opcode, error, ENODATA, [&](MountInstance& m, uint32_t op) {
    return m.remove_handler(op, error);
  });
}

void Supervisor::set_state_listener(StateListener listener) {
  std::lock_guard lk(listener_mu_);
  listener_ = std::move(listener);
}

// ---- telemetry::MetricsSource ----------------------------------------------------------------

void Supervisor::visit_mounts(const std::function<void(const telemetry::MountView&)>& fn) const {
  std::lock_guard lk(mu_);
  for (const auto& s : slots_) {
    telemetry::MountView v;
    v.name = s.cfg.name;
    v.mountpoint = s.cfg.mountpoint;
    v.backend = s.cfg.backend;
    v.io_path = to_string(s.cfg.io_path);
    v.io_path_effective = s.instance ? s.instance->effective_io_path() : "";
    v.up = s.instance && s.instance->live();
    v.start_failures = s.start_failures;
    v.resumes = s.instance ? s.instance->resumes() : 0;
    v.kernel_module = to_string(s.cfg.kernel_module);
    if (v.up) {
      v.transport = s.instance->transport();
      v.session = s.instance->session();
      v.workers = s.instance->worker_stats();
      v.uring_queues = s.instance->uring_queues();
      v.worker_count = s.instance->worker_count();
      v.transport_fallback = s.instance->transport_fallback();
      v.backend_metrics = s.instance->backend_metrics();
      v.tier = s.instance->tier();
      if (const bpf::HandlerSet* h = s.instance->handlers()) {
        v.handlers = true;
        v.handler_outcomes = h->outcomes();
        v.handler_table = h->list();
        v.kernel_answers = s.instance->kernel_answers();
      }
    }
    fn(v);
  }
}

telemetry::DaemonView Supervisor::daemon() const {
  telemetry::DaemonView d;
  d.reloads_ok = reloads_ok_.load();
  d.reloads_failed = reloads_failed_.load();
  d.last_reload_timestamp = last_reload_ts_.load();
  d.last_reload_ok = last_reload_ok_.load();
  d.last_reload_duration_seconds = last_reload_duration_.load();
  d.start_timestamp = start_ts_;
  d.metrics_listen_failures = metrics_listen_failures_.load();
  return d;
}

}  // namespace efuse::daemon

#include "daemon/service.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

#include "bpf/telemetry.h"
#include "common/log.h"
#include "control/bus.h"
#include "control/dbus_service.h"
#include "daemon/config_lock.h"
#include "daemon/fd_store.h"
#include "daemon/supervisor.h"
#include "telemetry/bpf_metrics.h"
#include "telemetry/metrics_server.h"

namespace efuse::daemon {
namespace {

// The passthrough backend holds one O_PATH descriptor per inode the kernel knows, so the
// descriptor limit bounds how many files a mount can have in the kernel's caches at once.
// Raise the soft limit to the hard one (systemd's unit sets LimitNOFILE) and say what it is.
void raise_fd_limit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = was;
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 65536)
    LOG_WARN("open file limit is %llu: passthrough mounts keep at most %llu inode "
             "descriptors and reopen the others by file handle when used, which costs a "
             "syscall per reopen (efuse_inode_fd_reopens_total); raise LimitNOFILE (systemd) "
             "or ulimit -Hn",
             static_cast<unsigned long long>(rl.rlim_cur),
             static_cast<unsigned long long>(rl.rlim_cur / 2));
}

// The watchdog is fed only while every live mount answers a STATFS through the kernel
// within the deadline: a deadlocked or wedged session stops the pings and systemd
// restarts the service. The probe runs on its own thread (a wedged mount blocks it).
class HealthProbe {
 public:
  bool healthy(const Supervisor& sup, std::chrono::milliseconds deadline) {
    std::vector<std::string> mountpoints;
    for (const auto& m : sup.list_mounts())
      if (m["state"] == "mounted") mountpoints.push_back(m["mountpoint"]);
    if (busy_ && !done_->load()) return false;  // the previous probe is still stuck
    done_ = std::make_shared<std::atomic<bool>>(false);
    auto ok = std::make_shared<std::atomic<bool>>(true);
    busy_ = true;
    std::thread([mountpoints, done = done_, ok] {
      for (const auto& mp : mountpoints) {
        struct statfs st;
        if (statfs(mp.c_str(), &st) != 0 && errno != EINTR) ok->store(false);
      }
      done->store(true);
    }).detach();
    auto until = std::chrono::steady_clock::now() + deadline;
    while (!done_->load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return done_->load() && ok->load();
  }

 private:
  bool busy_ = false;
  std::shared_ptr<std::atomic<bool>> done_ = std::make_shared<std::atomic<bool>>(true);
};

}  // namespace

int exit_with(int status, const std::string& message) {
  LOG_ERROR("%s", message.c_str());
  std::string line = "STATUS=" + message;
  for (char& c : line)
    if (c == '\n') c = ' ';
  sd_notify(0, line.c_str());
  (void)sd_notify_barrier(0, 5 * 1000 * 1000);  // systemd has the status before we exit
  return status;
}

int run_service(Config cfg, const ServiceOptions& opts) {
  // Signals are taken synchronously by this thread; no other thread ever sees them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Files are created with the caller's mode and umask as the kernel passes them (or the
  // parent's default ACL); the daemon's own umask must not mask them again.
  umask(0);
  raise_fd_limit();
  // Descriptors a previous efused left in systemd's store (restart without remounting).
  FdStore store;

  // One efused per config file and per bus name, checked before anything is mounted.
  ConfigLock lock;
  if (!opts.config_path.empty()) {
    std::string why;
    switch (lock.acquire(opts.config_path, &why)) {
      case ConfigLock::Outcome::Held: break;
      case ConfigLock::Outcome::InUse: return exit_with(kExitInUse, why);
      case ConfigLock::Outcome::Unavailable:
        LOG_WARN("not locking %s against a second efused: %s", opts.config_path.c_str(),
                 why.c_str());
        break;
    }
  }
  Supervisor sup(opts.config_path, std::move(cfg));
  if (store.enabled()) sup.set_fd_store(&store);

  // org.efuse.Manager1: efusectl and systemd's ExecReload talk to it. Taken before mounting:
  // a name owned by another efused means that one serves already.
  std::unique_ptr<control::DbusService> dbus;
  if (opts.bus != "none") {
    std::string err;
    auto bus = control::open_bus(opts.bus, &err);
    Status started = Errno{ENOTCONN};
    if (bus.ok()) {
      dbus = std::make_unique<control::DbusService>(sup, std::move(bus).value());
      started = dbus->start(&err);
      if (!started.ok()) dbus.reset();
    }
    if (started.error() == EEXIST)
      return exit_with(kExitInUse, "D-Bus " + control::describe_bus(opts.bus) + ": " + err);
    if (!dbus) {
      // An explicitly requested bus that cannot be used is a configuration error.
      if (opts.bus != "system")
        return exit_with(kExitFailed, "D-Bus " + control::describe_bus(opts.bus) + ": " + err);
      LOG_WARN("D-Bus: %s; efusectl cannot reach this efused", err.c_str());
    }
  }

  size_t live = sup.start_all();
  if (live == 0 && sup.mount_count() > 0)
    return exit_with(kExitFailed, "no mount could be started");
  if (opts.strict && live != sup.mount_count()) {
    return exit_with(kExitFailed, std::to_string(sup.mount_count() - live) + " of " +
                                      std::to_string(sup.mount_count()) +
                                      " mount(s) failed to start");
  }

  // eBPF telemetry of every FUSE mount on the host (kernel-side latency, context switches),
  // at the config's level (telemetry: full | requests | off), changed live on reload. Never
  // fails the daemon: when the kernel refuses it logs why once and /metrics says
  // efuse_bpf_up 0. EFUSE_BPF=0 turns it off whatever the config says. Outlives the
  // metrics server and the D-Bus object that read it.
  auto level_of = [&opts](const Config& c) {
    const std::string& text = opts.telemetry_override ? *opts.telemetry_override : c.telemetry;
    return bpf::parse_level(text).value_or(bpf::Level::Full);  // schema and main checked it
  };
  static_assert(Config{}.telemetry_sample_every == bpf::kDefaultSampleEvery);
  auto sample_every_of = [&opts](const Config& c) {
    return opts.sample_every_override ? *opts.sample_every_override : c.telemetry_sample_every;
  };
  bpf::Options bpf_opts = bpf::Options::from_env();
  bpf_opts.level = level_of(sup.config());
  bpf_opts.sample_every = sample_every_of(sup.config());
  std::unique_ptr<bpf::Telemetry> bpf_telemetry = bpf::Telemetry::start(bpf_opts);
  telemetry::BpfMetricsSource metrics_source(sup, bpf_telemetry.get());
  sup.set_telemetry_view([&sup, &opts, t = bpf_telemetry.get()] {
    const bpf::Status st = t->status();
    const std::string configured =
        opts.telemetry_override ? *opts.telemetry_override : sup.config().telemetry;
    return nlohmann::json{{"configured", configured}, {"level", st.level},
                          {"up", st.up}, {"reason", st.reason}, {"off", st.off},
                          {"sample_every", st.sample_every}};
  });

  // /metrics follows the config across reloads; --metrics pins it.
  std::unique_ptr<telemetry::MetricsServer> metrics;
  auto listen_of = [&opts](const Config& c) {
    return opts.metrics_override ? *opts.metrics_override : c.metrics_listen;
  };
  // A failure shows in the log, STATUS=, efusectl status and
  // efuse_metrics_listen_failures_total; every reload tries again.
  auto start_metrics = [&](const std::string& listen, std::string* error) -> Status {
    metrics.reset();
    if (!listen.empty()) {
      try {
        metrics = std::make_unique<telemetry::MetricsServer>(listen, metrics_source);
      } catch (const telemetry::ListenError& e) {
        *error = e.what();  // "metrics: cannot listen on ..."
      } catch (const std::exception& e) {
        *error = std::string("metrics: ") + e.what();
      }
    }
    if (!metrics && !listen.empty()) {
      *error += "; serving the mounts without /metrics (systemctl reload efused, or SIGHUP, "
                "retries)";
      sup.set_metrics_state(listen, "", *error);
      return Errno{EADDRNOTAVAIL};
    }
    sup.set_metrics_state(listen, metrics ? metrics->url() : "", "");
    return {};
  };
  std::string error;
  if (!start_metrics(listen_of(sup.config()), &error).ok()) LOG_ERROR("%s", error.c_str());
  // Reloads move /metrics when its address changed, and retry it when it is not serving.
  sup.set_applied_hook([&](const Config& old_cfg, const Config& new_cfg, std::string* err) -> Status {
    if (level_of(old_cfg) != level_of(new_cfg)) bpf_telemetry->set_level(level_of(new_cfg));
    if (sample_every_of(old_cfg) != sample_every_of(new_cfg))
      bpf_telemetry->set_sample_every(sample_every_of(new_cfg));
    if (listen_of(old_cfg) == listen_of(new_cfg) && (metrics || listen_of(new_cfg).empty()))
      return {};
    return start_metrics(listen_of(new_cfg), err);
  });

  // What an operator at a terminal needs to know (the quick start prints this).
  for (const auto& m : sup.list_mounts())
    if (m["state"] == "mounted")
      std::printf("efused: %s: %s served at %s\n", m["name"].get<std::string>().c_str(),
                  m["source"].get<std::string>().empty()
                      ? m["backend"].get<std::string>().c_str()  // memory: no source
                      : m["source"].get<std::string>().c_str(),
                  m["mountpoint"].get<std::string>().c_str());
  if (metrics) std::printf("efused: metrics at %s\n", metrics->url().c_str());
  std::printf("efused: stop with Ctrl-C or kill -TERM %d\n", static_cast<int>(getpid()));
  std::printf("efused: ready\n");
  std::fflush(stdout);
  sd_notify(0, "READY=1");
  sup.notify_status();

  uint64_t watchdog_usec = 0;
  bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  auto last_ping = std::chrono::steady_clock::now();
  HealthProbe probe;

  bool restart = false;
  for (;;) {
    struct timespec tick{0, 500 * 1000 * 1000};
    int sig = sigtimedwait(&sigs, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      // systemd's restart (systemctl restart, a package upgrade) keeps the mounts: the next
      // efused resumes their connections from the fd store. A stop unmounts them.
      std::string job;
      restart = sig == SIGTERM && store.enabled() && restart_pending(&job);
      if (restart)
        LOG_INFO("%s: restart (%s): leaving %zu mount(s) mounted for the next efused",
                 strsignal(sig), job.c_str(), sup.live_count());
      else
        LOG_INFO("%s: unmounting %zu mount(s)%s%s", strsignal(sig), sup.live_count(),
                 job.empty() ? "" : "; ", job.c_str());
      break;
    }
    if (sig == SIGHUP) {
      std::string reload_error;
      (void)sup.reload(&reload_error);  // logs failures and keeps the running config
      continue;
    }
    sup.check_mounts();
    if (watchdog) {
      auto now = std::chrono::steady_clock::now();
      auto half = std::chrono::microseconds(watchdog_usec / 2);
      if (now - last_ping >= half / 2) {
        if (probe.healthy(sup, std::chrono::duration_cast<std::chrono::milliseconds>(half / 2))) {
          sd_notify(0, "WATCHDOG=1");
          last_ping = now;
        } else {
          LOG_WARN("health check failed: a mount did not answer STATFS; not feeding the watchdog");
        }
      }
    }
  }
  sd_notify(0, "STOPPING=1");
  dbus.reset();
  sup.set_applied_hook(nullptr);
  metrics.reset();
  if (restart)
    sup.detach_all_for_restart();
  else
    sup.stop_all();
  return kExitOk;
}

}  // namespace efuse::daemon

// Supervisor: owns the mounts' lifecycles, applies config reloads as diffs, and answers
// the control plane (D-Bus) and the metrics layer.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "control/manager.h"
#include "daemon/config.h"
#include "daemon/mount_instance.h"
#include "telemetry/source.h"

namespace efuse::daemon {

class Supervisor final : public control::Manager, public telemetry::MetricsSource {
 public:
  // `config_path` is what Reload re-reads; empty when mounts came from the command line.
  Supervisor(std::string config_path, Config initial);
  ~Supervisor() override;
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts every configured mount; one failing mount does not stop the others (its error
  // is logged, kept for D-Bus and counted in /metrics). Returns how many are live.
  size_t start_all();
  // Unmounts everything (lazily when busy).
  void stop_all();
  // systemd's file descriptor store (fd_store.h): mounts keep their connections there, and
  // start_all() resumes the connections a previous efused left. Set before start_all().
  void set_fd_store(FdStore* store) { store_ = store; }
  // Stops serving every mount without unmounting, for the next efused (restart); mounts
  // that cannot be resumed are unmounted as by stop_all().
  void detach_all_for_restart();
  // Marks mounts whose connection ended behind our back (umount from outside) as failed.
  // Returns how many mounts are live afterwards.
  size_t check_mounts();
  // Called after a reload was applied, with the old and new config (e.g. to move /metrics).
  // An error it returns is reported as the reload's error (the mounts stay as applied).
  using AppliedHook = std::function<Status(const Config& old_cfg, const Config& new_cfg,
                                           std::string* error)>;
  void set_applied_hook(AppliedHook hook) { applied_hook_ = std::move(hook); }
  // What telemetry() reports (set once by the service, before the control plane starts).
  void set_telemetry_view(std::function<nlohmann::json()> view) { telemetry_view_ = std::move(view); }
  Config config() const;
  size_t live_count() const;
  // STATUS= for systemd: how many mounts are live, and a /metrics problem if there is one.
  void notify_status() const;
  // What /metrics does now: the configured address, the URL served ("" when not serving)
  // and why it is not serving ("" when it is, or is off). An error counts a failure.
  void set_metrics_state(const std::string& listen, const std::string& url,
                         const std::string& error);

  // control::Manager
  std::string version() const override;
  nlohmann::json telemetry() const override;
  size_t mount_count() const override;
  nlohmann::json daemon_status() const override;
  nlohmann::json list_mounts() const override;
  Result<nlohmann::json> get_mount(const std::string& name) const override;
  Status mount(const std::string& name, std::string* error) override;
  Status unmount(const std::string& name, std::string* error) override;
  Status reload(std::string* error) override;
  Result<nlohmann::json> list_handlers(const std::string& mount,
                                       std::string* error) const override;
  Status swap_handler(const std::string& mount, const std::string& opcode,
                      const std::string& path, std::string* error) override;
  Status remove_handler(const std::string& mount, const std::string& opcode,
                        std::string* error) override;
  void set_state_listener(StateListener listener) override;

  // telemetry::MetricsSource
  void visit_mounts(const std::function<void(const telemetry::MountView&)>& fn) const override;
  telemetry::DaemonView daemon() const override;

 private:
  struct Slot {
    MountConfig cfg;
    std::unique_ptr<MountInstance> instance;  // live when instance && instance->live()
    std::string state = "unmounted";          // starting | mounted | failed | unmounted
    std::string error;
    uint64_t start_failures = 0;
  };
  struct Event {
    std::string name, state;
  };

  // Both expect mu_ held; they append state changes to `events`.
  void start_slot(Slot& slot, std::vector<Event>* events);
  void stop_slot(Slot& slot, const char* new_state, std::vector<Event>* events);
  Slot* find(const std::string& name);
  const Slot* find(const std::string& name) const;
  nlohmann::json view(const Slot& slot) const;
  // The live mount `name` whose handlers can be managed, or an errno with *error filled
  // (ENOENT, ENOTCONN, EOPNOTSUPP: the tier in effect and why). Expects mu_ held.
  Result<MountInstance*> handler_mount(const std::string& name, std::string* error) const;
  template <typename Change>
  Status change_handler(const std::string& name, const std::string& opcode, std::string* error,
                        int refused, Change change);
  void emit(const std::vector<Event>& events);
  Status apply(Config next, std::string* error);

  const std::string config_path_;
  mutable std::mutex mu_;        // slots_, config_
  std::mutex reload_mu_;         // one reload / mount / unmount at a time
  Config config_;
  std::vector<Slot> slots_;      // in config order
  StateListener listener_;
  std::mutex listener_mu_;
  std::function<nlohmann::json()> telemetry_view_;
  AppliedHook applied_hook_;

  std::string metrics_listen_, metrics_url_, metrics_error_;  // under mu_
  std::atomic<uint64_t> metrics_listen_failures_{0};
  std::atomic<uint64_t> reloads_ok_{0};
  std::atomic<uint64_t> reloads_failed_{0};
  std::atomic<double> last_reload_ts_{0};
  std::atomic<bool> last_reload_ok_{true};
  std::atomic<double> last_reload_duration_{0};
  double start_ts_;
  FdStore* store_ = nullptr;
};

}  // namespace efuse::daemon

// The efused service runtime: supervisor, /metrics, D-Bus, systemd notification, signals.
#pragma once

#include <optional>
#include <string>

#include "daemon/config.h"

namespace efuse::daemon {

// efused's exit statuses: efused --help, README and efused.service (RestartPreventExitStatus=)
// list them.
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;   // no mount could be started (with --mount: any mount failed)
constexpr int kExitUsage = 2;    // bad command line
constexpr int kExitInUse = 75;   // another efused serves this config file or the D-Bus name
constexpr int kExitConfig = 78;  // the config file is invalid or unreadable (EX_CONFIG)

// Logs `message`, shows it in systemd's STATUS= (waiting until systemd has it, as the process
// is about to exit) and returns `status`.
int exit_with(int status, const std::string& message);

struct ServiceOptions {
  std::string config_path;                      // what SIGHUP / Reload re-reads ("" = none)
  std::string bus = "system";                   // "system", "none" or a D-Bus address
  std::optional<std::string> metrics_override;  // --metrics: wins over the config on reload
  std::optional<std::string> telemetry_override;  // --telemetry: likewise
  std::optional<unsigned> sample_every_override;  // --telemetry-sample-every: likewise
  bool strict = false;                          // exit 1 if any mount fails to start
};

// Runs until SIGTERM/SIGINT; returns the process exit status.
int run_service(Config cfg, const ServiceOptions& opts);

}  // namespace efuse::daemon

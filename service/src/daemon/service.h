// The efused service runtime: supervisor, /metrics, D-Bus, systemd notification, signals.
#pragma once

#include <optional>
#include <string>

#include "daemon/config.h"

namespace efuse::daemon {

struct ServiceOptions {
  std::string config_path;                      // what SIGHUP / Reload re-reads ("" = none)
  std::string bus = "system";                   // "system", "none" or a D-Bus address
  std::optional<std::string> metrics_override;  // --metrics: wins over the config on reload
  std::optional<std::string> telemetry_override;  // --telemetry: likewise
  bool strict = false;                          // exit 1 if any mount fails to start
};

// Runs until SIGTERM/SIGINT; returns the process exit status.
int run_service(Config cfg, const ServiceOptions& opts);

}  // namespace efuse::daemon

#include "telemetry/daemon_metrics.h"

#include "telemetry/family.h"

#ifndef EFUSE_VERSION
#define EFUSE_VERSION "unknown"
#endif

namespace efuse::telemetry {
namespace {

using prometheus::MetricType;

void append_gauge(std::vector<prometheus::MetricFamily>& out, const char* name,
                  const char* help, double value, Labels labels = {}) {
  prometheus::MetricFamily f = make_family(name, help, MetricType::Gauge);
  add_gauge(f, std::move(labels), value);
  out.push_back(std::move(f));
}

void append_reloads(const DaemonView& d, std::vector<prometheus::MetricFamily>& out) {
  prometheus::MetricFamily reloads =
      make_family("efuse_config_reloads_total",
                  "Configuration reloads attempted, by result (success or failure).",
                  MetricType::Counter);
  add_counter(reloads, {{"result", "success"}}, static_cast<double>(d.reloads_ok));
  add_counter(reloads, {{"result", "failure"}}, static_cast<double>(d.reloads_failed));
  out.push_back(std::move(reloads));

  append_gauge(out, "efuse_config_last_reload_success",
               "Whether the last configuration reload succeeded (1) or failed (0); 1 before "
               "any reload.",
               d.last_reload_ok ? 1 : 0);
  append_gauge(out, "efuse_config_last_reload_timestamp_seconds",
               "Unix time of the last configuration reload attempt; 0 if there was none.",
               d.last_reload_timestamp);
  append_gauge(out, "efuse_config_last_reload_duration_seconds",
               "How long the last configuration reload took (remounts included); 0 if there "
               "was none.",
               d.last_reload_duration_seconds);
}

}  // namespace

void append_daemon_families(const DaemonView& daemon, std::vector<prometheus::MetricFamily>& out) {
  append_gauge(out, "efuse_build_info", "Constant 1; the version label is efused's version.", 1,
               {{"version", EFUSE_VERSION}});
  append_gauge(out, "efuse_start_time_seconds", "Unix time when efused started.",
               daemon.start_timestamp);
  append_reloads(daemon, out);
  prometheus::MetricFamily listen =
      make_family("efuse_metrics_listen_failures_total",
                  "Times efused could not listen on the configured /metrics address (address "
                  "in use, IPv6 on Debian 12's civetweb...); each start and reload that "
                  "(re)tries it counts. Seen once a later reload has bound it.",
                  MetricType::Counter);
  add_counter(listen, {}, static_cast<double>(daemon.metrics_listen_failures));
  out.push_back(std::move(listen));
}

}  // namespace efuse::telemetry

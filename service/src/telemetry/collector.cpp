#include "telemetry/collector.h"

#include <exception>

#include "common/log.h"
#include "telemetry/bpf_metrics.h"
#include "telemetry/daemon_metrics.h"
#include "telemetry/family.h"
#include "telemetry/mount_metrics.h"
#include "telemetry/process_metrics.h"

namespace efuse::telemetry {

std::vector<prometheus::MetricFamily> Collector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  try {
    collect_into(out);
  } catch (const std::exception& e) {
    note_failure(e.what());
  } catch (...) {
    note_failure("unknown exception");
  }
  try {
    prometheus::MetricFamily errors =
        make_family("efuse_scrape_errors_total",
                    "Scrapes that failed part-way (their output lacked some families).",
                    prometheus::MetricType::Counter);
    add_counter(errors, {}, static_cast<double>(scrape_errors_.load()));
    out.push_back(std::move(errors));
  } catch (...) {
    // Out of memory: return what there is; the HTTP thread must not see an exception.
  }
  return out;
}

void Collector::collect_into(std::vector<prometheus::MetricFamily>& out) const {
  append_daemon_families(source_.daemon(), out);
  MountFamilies mounts;
  std::vector<OwnMount> own;  // names the BPF families use for efused's own mounts
  source_.visit_mounts([&mounts, &own](const MountView& m) {
    mounts.add(m);
    own.push_back({m.name, m.mountpoint});
  });
  std::move(mounts).append_to(out);
  append_bpf_families(source_.bpf_telemetry(), own, out);
  append_process_families(read_process_stats(), out);
}

void Collector::note_failure(const char* what) const noexcept {
  scrape_errors_.fetch_add(1, std::memory_order_relaxed);
  LOG_WARN("metrics: scrape failed part-way: %s", what);
}

}  // namespace efuse::telemetry

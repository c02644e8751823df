// telemetry::Collector: builds every efuse_* metric family at scrape time from a
// MetricsSource. Nothing is counted twice: the request path keeps its own lock-free
// counters (fuse::SessionStats, fuse::WorkerStats) and the collector only reads them, the way
// ebpf_exporter reads BPF maps when Prometheus asks.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "telemetry/source.h"

namespace efuse::telemetry {

class Collector final : public prometheus::Collectable {
 public:
  // `source` must outlive the collector (and any Exposer it is registered with).
  explicit Collector(const MetricsSource& source) : source_(source) {}

  // Called on the HTTP server's threads. Never throws: a failure while building (a
  // throwing source, bad_alloc) is logged and counted in efuse_scrape_errors_total, and
  // the families built so far are still returned.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  void collect_into(std::vector<prometheus::MetricFamily>& out) const;
  void note_failure(const char* what) const noexcept;

  const MetricsSource& source_;
  mutable std::atomic<uint64_t> scrape_errors_{0};
};

}  // namespace efuse::telemetry

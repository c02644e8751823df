// Per-mount metric families, filled one MountView at a time while the supervisor's lock is
// held (MetricsSource::visit_mounts), then handed over as a whole.
#pragma once

#include <prometheus/metric_family.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "fuse/session.h"
#include "fuse/stats.h"
#include "telemetry/io_path_metrics.h"
#include "telemetry/source.h"

namespace efuse::telemetry {

// A plain copy of one opcode's counters (or of several opcodes' summed: every slot whose
// name is "unknown" is reported as one series, so that labels stay unique).
struct OpcodeSnapshot {
  uint64_t requests = 0;
  uint64_t latency_sum_ns = 0;
  std::array<uint64_t, fuse::kLatencyBounds.size() + 1> latency_buckets{};  // non-cumulative
  std::array<uint64_t, fuse::kMaxErrno + 1> errors_by_errno{};

  void add(const fuse::OpcodeStats& op);
};

// Snapshots of every opcode with requests, keyed by opcode label value.
std::map<std::string, OpcodeSnapshot> snapshot_opcodes(const fuse::SessionStats& stats);

// Cumulative Prometheus buckets from the non-cumulative ones: one bucket per
// fuse::kLatencyBounds entry plus +Inf, whose count is the histogram's sample count.
prometheus::ClientMetric::Histogram latency_histogram(const OpcodeSnapshot& op);

class MountFamilies {
 public:
  MountFamilies();

  // Adds every series of one mount. Reads only what `mount` points at; copies the values.
  void add(const MountView& mount);

  // Moves the families that have at least one series into `out`.
  void append_to(std::vector<prometheus::MetricFamily>& out) &&;

 private:
  void add_state(const MountView& mount);
  void add_session(const std::string& mount, const fuse::Session& session);
  void add_opcodes(const std::string& mount, const fuse::SessionStats& stats);
  void add_errors(const std::string& mount, const std::string& opcode, const OpcodeSnapshot& op);
  void add_latency(const std::string& mount, const std::string& opcode, const OpcodeSnapshot& op);
  // The backend's own series (fs::Filesystem::metrics), one family per name.
  void add_backend(const std::string& mount, const std::vector<fs::Metric>& metrics);
  void add_kernel(const std::string& mount, const fuse::Negotiated& negotiated);
  void add_kernel_tier(const MountView& mount);
  void add_handler_table(const MountView& mount);
  void add_workers(const std::string& mount, const std::vector<const fuse::WorkerStats*>& workers,
                   unsigned uring_queues);

  std::map<std::string, prometheus::MetricFamily> backend_;  // by name, so output is ordered
  prometheus::MetricFamily up_;
  prometheus::MetricFamily start_failures_;
  prometheus::MetricFamily resumes_;
  prometheus::MetricFamily info_;
  prometheus::MetricFamily fallback_;
  prometheus::MetricFamily notifications_;
  prometheus::MetricFamily invalidation_failures_;
  prometheus::MetricFamily requests_;
  prometheus::MetricFamily errors_;
  prometheus::MetricFamily duration_;
  prometheus::MetricFamily decode_errors_;
  prometheus::MetricFamily passthrough_opens_;
  prometheus::MetricFamily kernel_open_holds_;
  prometheus::MetricFamily passthrough_refusals_;
  prometheus::MetricFamily feature_;
  prometheus::MetricFamily feature_offered_;
  prometheus::MetricFamily protocol_minor_;
  prometheus::MetricFamily max_write_;
  prometheus::MetricFamily worker_requests_;
  prometheus::MetricFamily worker_in_flight_;
  prometheus::MetricFamily worker_wait_;
  prometheus::MetricFamily worker_busy_;
  prometheus::MetricFamily worker_idle_class_;
  prometheus::MetricFamily worker_starved_;
  prometheus::MetricFamily kernel_answered_;
  prometheus::MetricFamily kernel_fallbacks_;
  prometheus::MetricFamily kernel_map_entries_;
  prometheus::MetricFamily kernel_map_bytes_;
  prometheus::MetricFamily kernel_map_skipped_;
  prometheus::MetricFamily kernel_map_drops_;
  prometheus::MetricFamily kernel_entry_lookups_;
  prometheus::MetricFamily kernel_releases_;
  prometheus::MetricFamily kernel_read_capacity_;
  prometheus::MetricFamily kernel_read_evictions_;
  prometheus::MetricFamily handler_info_;
  prometheus::MetricFamily handler_loaded_;
  prometheus::MetricFamily handler_swaps_;
  prometheus::MetricFamily handler_swap_failures_;
  prometheus::MetricFamily handler_removals_;
  prometheus::MetricFamily handler_runs_;
  prometheus::MetricFamily handler_run_seconds_;
  IoPathFamilies io_path_;  // efuse_blocking_* (the session's FSYNC offloading)
};

}  // namespace efuse::telemetry

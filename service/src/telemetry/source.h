// What the metrics layer reads from the daemon at scrape time. The Supervisor implements
// MetricsSource; visit_mounts() holds the supervisor's lock while it calls back, so the
// pointers in a MountView are valid for the duration of the callback only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bpf/handlers.h"
#include "fs/filesystem.h"
#include "fuse/kernel_answers.h"
#include "fuse/session.h"
#include "fuse/stats.h"

namespace efuse::bpf {
class Telemetry;
}

namespace efuse::telemetry {

struct MountView {
  std::string name;
  std::string mountpoint;
  std::string backend;    // "passthrough"
  std::string transport;  // "classic" | "uring" (what runs), "" when not live
  std::string io_path;    // configured policy: "auto" | "passthrough" | "cache"
  std::string io_path_effective;  // in effect for new opens: io_path, or "cache" when the
                                  // kernel did not grant passthrough; "" when not live
  bool up = false;
  const fuse::Session* session = nullptr;             // null when not live
  std::vector<const fuse::WorkerStats*> workers;      // empty when not live
  unsigned uring_queues = 0;  // the first `uring_queues` workers are io_uring queues (qid order)
  fuse::WorkerCount worker_count;  // the /dev/fuse workers (ClassicChannel); zero when not live
  std::string transport_fallback;  // why a configured io_uring transport is not in use
  uint64_t start_failures = 0;                        // cumulative failed mount attempts
  uint64_t resumes = 0;  // times a new efused resumed this mount's connection (restarts)
  std::vector<fs::Metric> backend_metrics;            // the backend's own (none when not live)
  // The kernel module tier (kmod/): configured kernel_module, the tier in effect ("module",
  // "stock"; "" when not live), and on the module tier with handlers attached, what became
  // of the requests that reached them (EFUSE_HANDLER_OUTCOME_SLOTS counters by opcode and
  // enum efuse_handler_stat, efuse_handler_maps.h) and the answers efused keeps for them.
  std::string kernel_module;
  std::string tier;
  bool handlers = false;
  std::vector<uint64_t> handler_outcomes;
  fuse::KernelAnswerStats kernel_answers;
  // The handler of each opcode that had one or a swap attempt (bpf::HandlerSet::list()).
  std::vector<bpf::HandlerView> handler_table;
};

struct DaemonView {
  uint64_t reloads_ok = 0;
  uint64_t reloads_failed = 0;
  double last_reload_timestamp = 0;  // unix seconds of the last reload attempt; 0 = never
  bool last_reload_ok = true;
  double last_reload_duration_seconds = 0;
  double start_timestamp = 0;        // unix seconds when efused started
  uint64_t metrics_listen_failures = 0;  // times /metrics could not listen where configured
};

class MetricsSource {
 public:
  virtual ~MetricsSource() = default;
  virtual void visit_mounts(const std::function<void(const MountView&)>& fn) const = 0;
  virtual DaemonView daemon() const = 0;
  // The eBPF telemetry (kernel-side metrics of every FUSE mount), if efused runs one; see
  // telemetry/bpf_metrics.h. Must outlive the source's scrapes.
  virtual const bpf::Telemetry* bpf_telemetry() const { return nullptr; }
};

}  // namespace efuse::telemetry

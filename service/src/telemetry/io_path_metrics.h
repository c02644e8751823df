// Metric families of the adaptive schedulers that live in the session and channel, per
// mount: the queue balancing of requests that may block (accel/offload.h), its offload pool
// (fuse/offload_pool.h) and the /dev/fuse worker count (accel/workers.h). The io_path
// scheduler's series (efuse_io_path_*) are the passthrough backend's own:
// fs::Filesystem::metrics().
#pragma once

#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "accel/offload.h"
#include "fuse/offload_pool.h"
#include "fuse/stats.h"

namespace efuse::telemetry {

class IoPathFamilies {
 public:
  IoPathFamilies();
  // Queue balancing of requests that may block (accel/offload.h).
  void add_blocking(const std::string& mount, const accel::OffloadReport& report);
  // The pool, and the requests still owed a deferred reply (lock waits and offloaded ones).
  void add_offload_pool(const std::string& mount, const fuse::OffloadPool::Stats& pool,
                        uint64_t deferred);
  void add_worker_count(const std::string& mount, const fuse::WorkerCount& workers);
  void append_to(std::vector<prometheus::MetricFamily>& out) &&;

 private:
  prometheus::MetricFamily blocking_;
  prometheus::MetricFamily blocking_predicted_;
  prometheus::MetricFamily pool_depth_;
  prometheus::MetricFamily pool_threads_;
  prometheus::MetricFamily pool_offloaded_;
  prometheus::MetricFamily pool_rejected_;
  prometheus::MetricFamily deferred_;
  prometheus::MetricFamily workers_;
  prometheus::MetricFamily workers_limit_;
  prometheus::MetricFamily worker_changes_;
};

}  // namespace efuse::telemetry

// Metric families of the adaptive schedulers that live in the session, per mount: the queue
// balancing of requests that may block (accel/offload.h). The io_path scheduler's series
// (efuse_io_path_*) are the passthrough backend's own: fs::Filesystem::metrics().
#pragma once

#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "accel/offload.h"

namespace efuse::telemetry {

class IoPathFamilies {
 public:
  IoPathFamilies();
  // Queue balancing of requests that may block (accel/offload.h).
  void add_blocking(const std::string& mount, const accel::OffloadReport& report);
  void append_to(std::vector<prometheus::MetricFamily>& out) &&;

 private:
  prometheus::MetricFamily blocking_;
  prometheus::MetricFamily blocking_predicted_;
};

}  // namespace efuse::telemetry

// Metric families of the adaptive I/O path scheduler (accel/io_path.h), per mount:
// decisions, probes, predictions and the current choice of each class of opens.
#pragma once

#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "accel/io_path.h"
#include "accel/offload.h"

namespace efuse::telemetry {

class IoPathFamilies {
 public:
  IoPathFamilies();
  void add(const std::string& mount, const accel::IoPathReport& report);
  // Queue balancing of requests that may block (accel/offload.h).
  void add_blocking(const std::string& mount, const accel::OffloadReport& report);
  void append_to(std::vector<prometheus::MetricFamily>& out) &&;

 private:
  prometheus::MetricFamily decisions_;
  prometheus::MetricFamily probes_;
  prometheus::MetricFamily predicted_;
  prometheus::MetricFamily choice_;
  prometheus::MetricFamily epochs_;
  prometheus::MetricFamily blocking_;
  prometheus::MetricFamily blocking_predicted_;
};

}  // namespace efuse::telemetry

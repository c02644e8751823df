// Daemon-wide families: configuration reloads, build, start time.
#pragma once

#include <prometheus/metric_family.h>

#include <vector>

#include "telemetry/source.h"

namespace efuse::telemetry {

void append_daemon_families(const DaemonView& daemon, std::vector<prometheus::MetricFamily>& out);

}  // namespace efuse::telemetry

// Small builders for prometheus::MetricFamily values assembled at scrape time.
#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>

#include <string>
#include <vector>

namespace efuse::telemetry {

using Labels = std::vector<prometheus::ClientMetric::Label>;

prometheus::MetricFamily make_family(std::string name, std::string help,
                                     prometheus::MetricType type);

void add_counter(prometheus::MetricFamily& family, Labels labels, double value);
void add_gauge(prometheus::MetricFamily& family, Labels labels, double value);

// Appends `family` to `out` unless it has no samples (a family with HELP and TYPE but no
// series only adds noise to the exposition).
void append_nonempty(std::vector<prometheus::MetricFamily>& out,
                     prometheus::MetricFamily&& family);

}  // namespace efuse::telemetry

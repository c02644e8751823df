#include "telemetry/family.h"

#include <utility>

namespace efuse::telemetry {

prometheus::MetricFamily make_family(std::string name, std::string help,
                                     prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void add_counter(prometheus::MetricFamily& family, Labels labels, double value) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = value;
  family.metric.push_back(std::move(m));
}

void add_gauge(prometheus::MetricFamily& family, Labels labels, double value) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  family.metric.push_back(std::move(m));
}

void append_nonempty(std::vector<prometheus::MetricFamily>& out,
                     prometheus::MetricFamily&& family) {
  if (!family.metric.empty()) out.push_back(std::move(family));
}

}  // namespace efuse::telemetry

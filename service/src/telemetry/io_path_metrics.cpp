#include "telemetry/io_path_metrics.h"

#include <utility>

#include "telemetry/family.h"

namespace efuse::telemetry {

using prometheus::MetricType;

IoPathFamilies::IoPathFamilies()
    : blocking_(make_family(
          "efuse_blocking_requests_total",
          "Requests that may block (opcode fsync, fsyncdir) by how they were served: inline "
          "(on the io_uring queue or /dev/fuse worker that read them; whatever is queued "
          "behind waits) or offload (on a thread of their own), and the scheduler's reason: "
          "guess, probe, predicted.",
          MetricType::Counter)),
      blocking_predicted_(make_family(
          "efuse_blocking_predicted_seconds",
          "Result of the latest completed probe per opcode that may block: how long each way "
          "held the serving thread (inline: the request's service time; offload: handing it "
          "to a thread of its own). The cheaper one is committed.",
          MetricType::Gauge)) {}

void IoPathFamilies::add_blocking(const std::string& mount, const accel::OffloadReport& r) {
  static constexpr const char* kPicks[] = {"guess", "probe", "predicted"};
  for (size_t kind = 0; kind < r.served.size(); ++kind) {
    const char* opcode = accel::to_string(static_cast<accel::Blocking>(kind));
    for (int path = 0; path < 2; ++path) {
      const char* how = accel::to_string(static_cast<accel::Serve>(path));
      for (size_t pick = 0; pick < 3; ++pick) {
        uint64_t n = r.served[kind][path][pick];
        if (n == 0) continue;
        add_counter(blocking_,
                    {{"mount", mount}, {"opcode", opcode}, {"path", how}, {"reason", kPicks[pick]}},
                    static_cast<double>(n));
      }
      if (r.engines[kind].predicted[path] >= 0)
        add_gauge(blocking_predicted_, {{"mount", mount}, {"opcode", opcode}, {"path", how}},
                  r.engines[kind].predicted[path] * 1e-9);
    }
  }
}

void IoPathFamilies::append_to(std::vector<prometheus::MetricFamily>& out) && {
  for (prometheus::MetricFamily* f : {&blocking_, &blocking_predicted_})
    append_nonempty(out, std::move(*f));
}

}  // namespace efuse::telemetry

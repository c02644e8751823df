#include "telemetry/io_path_metrics.h"

#include <utility>

#include "telemetry/family.h"

namespace efuse::telemetry {

using prometheus::MetricType;

IoPathFamilies::IoPathFamilies()
    : decisions_(make_family(
          "efuse_io_path_decisions_total",
          "Opens whose I/O path was decided (the first open of an inode; later opens join its "
          "path until the last is released), by decision (cache: through the page cache and "
          "efused; passthrough: FUSE passthrough) and reason: fixed (io_path cache or "
          "passthrough), unavailable (no passthrough on this mount), setid (writable open of a "
          "set-ID file), and with io_path auto writer (a writable open: passthrough), guess "
          "(nothing measured yet: the 64 KiB rule), "
          "probe (the class is measuring both paths), predicted (the class's cheaper path) or "
          "history (the file's own measured reopens).",
          MetricType::Counter)),
      probes_(make_family(
          "efuse_io_path_probes_total",
          "Probes the io_path auto scheduler started per class of opens, by cause: start, "
          "round (the committed round was used up), period (adaptive.reprobe_interval "
          "passed), drift (the committed path's measured cost moved 2x from its prediction, "
          "or it was refused), shift (the sizes of the files opened moved within the class).",
          MetricType::Counter)),
      predicted_(make_family(
          "efuse_io_path_predicted_cost_seconds",
          "Result of the latest completed probe of a class of opens: the mean cost per open "
          "of each path as efused measures it (cache: served READ and WRITE requests times "
          "20 us of round trip plus efused's time; passthrough: registering the backing file). "
          "No series for a path not measured or refused.",
          MetricType::Gauge)),
      choice_(make_family(
          "efuse_io_path_choice",
          "1 for the path a class of opens is committed to, 0 for the other; both 0 while "
          "the class probes.",
          MetricType::Gauge)),
      epochs_(make_family(
          "efuse_io_path_epochs_measured_total",
          "Epochs (first open of an inode to its last release) under io_path auto whose cost "
          "(or passthrough refusal) was measured and fed to the scheduler.",
          MetricType::Counter)),
      blocking_(make_family(
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

void IoPathFamilies::add(const std::string& mount, const accel::IoPathReport& r) {
  for (int path = 0; path < 2; ++path) {
    for (size_t reason = 0; reason < r.decisions[path].size(); ++reason) {
      uint64_t n = r.decisions[path][reason];
      if (n == 0) continue;
      add_counter(decisions_,
                  {{"mount", mount},
                   {"decision", accel::to_string(static_cast<accel::IoPath>(path))},
                   {"reason", accel::to_string(static_cast<accel::IoReason>(reason))}},
                  static_cast<double>(n));
    }
  }
  add_counter(epochs_, {{"mount", mount}}, static_cast<double>(r.epochs_measured));
  for (const accel::IoClassReport& c : r.classes) {
    for (size_t cause = 0; cause < c.engine.probes.size(); ++cause) {
      add_counter(probes_,
                  {{"mount", mount},
                   {"class", c.name},
                   {"cause", accel::to_string(static_cast<accel::ProbeCause>(cause))}},
                  static_cast<double>(c.engine.probes[cause]));
    }
    for (int path = 0; path < 2; ++path) {
      const char* name = accel::to_string(static_cast<accel::IoPath>(path));
      Labels labels{{"mount", mount}, {"class", c.name}, {"path", name}};
      if (c.engine.predicted[path] >= 0)
        add_gauge(predicted_, labels, c.engine.predicted[path] * 1e-9);
      add_gauge(choice_, labels, c.engine.choice == path ? 1 : 0);
    }
  }
}

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
  for (prometheus::MetricFamily* f : {&decisions_, &probes_, &predicted_, &choice_, &epochs_,
                                      &blocking_, &blocking_predicted_})
    append_nonempty(out, std::move(*f));
}

}  // namespace efuse::telemetry

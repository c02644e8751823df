#include "telemetry/io_path_metrics.h"

#include <utility>

#include "telemetry/family.h"

namespace efuse::telemetry {

using prometheus::MetricType;

IoPathFamilies::IoPathFamilies()
    : blocking_(make_family(
          "efuse_blocking_requests_total",
          "Requests that may block (opcode fsync, fsyncdir, fallocate, a truncating create, "
          "a size-changing setattr) by how the scheduler chose to serve them: inline (on the "
          "io_uring queue or /dev/fuse worker that read them; whatever is queued behind "
          "waits) or offload (on the mount's offload pool; efuse_offload_rejected_total of "
          "them were served inline after all), and its reason: guess, probe, predicted.",
          MetricType::Counter)),
      blocking_predicted_(make_family(
          "efuse_blocking_predicted_seconds",
          "Result of the latest completed probe per opcode that may block: what each way cost "
          "(inline: the request's service time, which the requests queued behind it wait; "
          "offload: the time until a pool thread started it). The cheaper one is committed.",
          MetricType::Gauge)),
      pool_depth_(make_family("efuse_offload_pool_depth",
                              "Requests on the mount's offload pool now: waiting for a "
                              "thread plus being served.",
                              MetricType::Gauge)),
      pool_threads_(make_family("efuse_offload_pool_threads",
                                "Threads of the mount's offload pool now (started when "
                                "work comes; at most offload_threads).",
                                MetricType::Gauge)),
      pool_offloaded_(make_family("efuse_offloaded_requests_total",
                                  "Requests served on the mount's offload pool, off the "
                                  "queue that read them, answered through a deferred reply.",
                                  MetricType::Counter)),
      pool_rejected_(make_family("efuse_offload_rejected_total",
                                 "Requests the scheduler chose to offload that the pool did "
                                 "not take (offload_queue full, no thread could start, "
                                 "stopping): served inline.",
                                 MetricType::Counter)),
      deferred_(make_family("efuse_deferred_requests",
                            "Requests that will be answered later through a deferred reply "
                            "and are not answered yet: lock waits (SETLKW) and requests on "
                            "the offload pool.",
                            MetricType::Gauge)),
      workers_(make_family("efuse_classic_workers",
                           "/dev/fuse worker threads running now (classic channel; beside "
                           "the io_uring queues, the readers of /dev/fuse).",
                           MetricType::Gauge)),
      workers_limit_(make_family("efuse_classic_workers_limit",
                                 "Bounds of the /dev/fuse worker count: bound=\"min\" "
                                 "(threads, always running), bound=\"max\" (max_threads).",
                                 MetricType::Gauge)),
      worker_changes_(make_family("efuse_classic_worker_changes_total",
                                  "Changes of the /dev/fuse worker count: change=\"grown\" "
                                  "(every worker was busy), change=\"retired\" (idle for a "
                                  "window, or above a lowered max_threads).",
                                  MetricType::Counter)) {}

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

void IoPathFamilies::add_offload_pool(const std::string& mount,
                                      const fuse::OffloadPool::Stats& pool, uint64_t deferred) {
  const Labels labels{{"mount", mount}};
  add_gauge(deferred_, labels, static_cast<double>(deferred));
  add_gauge(pool_depth_, labels, static_cast<double>(pool.queued + pool.running));
  add_gauge(pool_threads_, labels, pool.threads);
  add_counter(pool_offloaded_, labels, static_cast<double>(pool.submitted));
  add_counter(pool_rejected_, labels, static_cast<double>(pool.rejected));
}

void IoPathFamilies::add_worker_count(const std::string& mount, const fuse::WorkerCount& w) {
  if (w.max == 0) return;  // not live
  add_gauge(workers_, {{"mount", mount}}, w.running);
  add_gauge(workers_limit_, {{"mount", mount}, {"bound", "min"}}, w.min);
  add_gauge(workers_limit_, {{"mount", mount}, {"bound", "max"}}, w.max);
  add_counter(worker_changes_, {{"mount", mount}, {"change", "grown"}}, static_cast<double>(w.grown));
  add_counter(worker_changes_, {{"mount", mount}, {"change", "retired"}},
              static_cast<double>(w.retired));
}

void IoPathFamilies::append_to(std::vector<prometheus::MetricFamily>& out) && {
  for (prometheus::MetricFamily* f :
       {&blocking_, &blocking_predicted_, &pool_depth_, &pool_threads_, &pool_offloaded_,
        &pool_rejected_, &deferred_, &workers_, &workers_limit_, &worker_changes_})
    append_nonempty(out, std::move(*f));
}

}  // namespace efuse::telemetry

#include "telemetry/mount_metrics.h"

#include <limits>
#include <tuple>
#include <string>
#include <utility>

#include "bpf/handlers.h"
#include "fuse/opcodes.h"
#include "telemetry/errno_names.h"
#include "telemetry/family.h"
#include "telemetry/kernel_features.h"

namespace efuse::telemetry {
namespace {

using prometheus::MetricType;

constexpr double kNanosecond = 1e-9;

uint64_t load(const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); }

double seconds(uint64_t ns) { return static_cast<double>(ns) * kNanosecond; }

Labels mount_label(const std::string& mount) { return {{"mount", mount}}; }

Labels with(Labels labels, const char* name, std::string value) {
  labels.push_back({name, std::move(value)});
  return labels;
}

}  // namespace

void OpcodeSnapshot::add(const fuse::OpcodeStats& op) {
  requests += load(op.requests);
  latency_sum_ns += load(op.latency_sum_ns);
  for (size_t i = 0; i < latency_buckets.size(); ++i)
    latency_buckets[i] += load(op.latency_buckets[i]);
  if (load(op.errors) == 0) return;
  for (size_t i = 0; i < errors_by_errno.size(); ++i)
    errors_by_errno[i] += load(op.errors_by_errno[i]);
}

std::map<std::string, OpcodeSnapshot> snapshot_opcodes(const fuse::SessionStats& stats) {
  std::map<std::string, OpcodeSnapshot> out;
  for (uint32_t code = 0; code < stats.size(); ++code) {
    if (load(stats[code].requests) == 0) continue;
    out[fuse::opcode_name(code)].add(stats[code]);
  }
  return out;
}

prometheus::ClientMetric::Histogram latency_histogram(const OpcodeSnapshot& op) {
  prometheus::ClientMetric::Histogram h;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < fuse::kLatencyBounds.size(); ++i) {
    cumulative += op.latency_buckets[i];
    h.bucket.push_back({cumulative, fuse::kLatencyBounds[i]});
  }
  cumulative += op.latency_buckets.back();
  h.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
  // The count comes from the buckets, not from op.requests, so that +Inf == _count holds
  // even while a worker is between its increments of the two.
  h.sample_count = cumulative;
  h.sample_sum = seconds(op.latency_sum_ns);
  return h;
}

MountFamilies::MountFamilies()
    : up_(make_family("efuse_mount_up",
                      "Whether the mount is live and serving requests (1) or not (0). Every "
                      "configured mount has a series, failed ones too.",
                      MetricType::Gauge)),
      start_failures_(make_family("efuse_mount_start_failures_total",
                                  "Failed attempts to start (mount and serve) the mount.",
                                  MetricType::Counter)),
      resumes_(make_family("efuse_mount_resumes_total",
                           "Times a new efused took over this mount's FUSE connection without "
                           "remounting (systemctl restart, or a restart after a crash), since "
                           "the mount was mounted; kept across those restarts in the mount's "
                           "restart state. 0 when not live.",
                           MetricType::Counter)),
      info_(make_family("efuse_mount_info",
                        "Constant 1; labels describe the mount: configured mountpoint, backend, "
                        "transport running (empty when not live), configured I/O path policy "
                        "(io_path) and the one in effect (io_path_effective: cache when the "
                        "kernel did not grant FUSE passthrough; empty when not live), "
                        "configured kernel_module (auto, on, off) and the tier in effect "
                        "(tier: module = efuse.ko through /dev/efuse, stock = the kernel's "
                        "FUSE; empty when not live).",
                        MetricType::Gauge)),
      fallback_(make_family("efuse_mount_transport_fallback",
                            "1 when the mount was configured for (or auto-selected) FUSE over "
                            "io_uring but serves over /dev/fuse because io_uring could not be "
                            "used (the log says why); 0 otherwise.",
                            MetricType::Gauge)),
      notifications_(make_family("efuse_notifications_total",
                                 "Invalidation notifications sent to the kernel: for changes "
                                 "made in the backing tree behind efused's back "
                                 "(efuse_watch_invalidations_total) and for cached directory "
                                 "listings a change raced (efuse_listing_cache_drops_total).",
                                 MetricType::Counter)),
      invalidation_failures_(make_family(
          "efuse_invalidation_failures_total",
          "Invalidation notifications the kernel did not take (other than ENOENT, an object "
          "it had already forgotten), by kind: inode (attributes and data) or entry (a name). "
          "Its cache may hold stale data until the timeout; the log says why, once per kind.",
          MetricType::Counter)),
      requests_(make_family("efuse_requests_total",
                            "FUSE requests the daemon handled, by opcode (\"unknown\" for "
                            "opcodes efused does not know). Only opcodes seen so far appear.",
                            MetricType::Counter)),
      errors_(make_family("efuse_request_errors_total",
                          "FUSE requests answered with an error, by opcode and errno name "
                          "(\"other\" folds errnos beyond the table).",
                          MetricType::Counter)),
      duration_(make_family("efuse_request_duration_seconds",
                            "Time the daemon spent processing a FUSE request, from decode to "
                            "reply sent; excludes kernel queueing and the time before a worker "
                            "read the request.",
                            MetricType::Histogram)),
      decode_errors_(make_family("efuse_decode_errors_total",
                                 "Requests the session could not decode (truncated, bad "
                                 "lengths, malformed bodies).",
                                 MetricType::Counter)),
      passthrough_opens_(make_family("efuse_passthrough_opens_total",
                                     "Opens served with FUSE passthrough (kernel does the I/O "
                                     "on the backing file).",
                                     MetricType::Counter)),
      kernel_open_holds_(make_family("efuse_kernel_open_holds",
                                     "Nodes efused holds a passthrough open of (and so its "
                                     "backing id) while opens answered in the kernel may use "
                                     "them.",
                                     MetricType::Gauge)),
      passthrough_refusals_(make_family("efuse_passthrough_refusals_total",
                                        "Opens that asked for passthrough but fell back to I/O "
                                        "through the daemon (kernel refused the backing file).",
                                        MetricType::Counter)),
      feature_(make_family("efuse_kernel_feature",
                           "Whether the FUSE INIT exchange enabled the feature for this mount "
                           "(1) or not (0): offered by the kernel and accepted by efused.",
                           MetricType::Gauge)),
      feature_offered_(make_family("efuse_kernel_feature_offered",
                                   "Whether the kernel offered the feature at FUSE INIT (1) or "
                                   "not (0), whether or not efused accepted it.",
                                   MetricType::Gauge)),
      protocol_minor_(make_family("efuse_kernel_protocol_minor",
                                  "Negotiated FUSE protocol minor version (major is 7).",
                                  MetricType::Gauge)),
      max_write_(make_family("efuse_max_write_bytes",
                             "Largest WRITE request the kernel may send, as negotiated at INIT.",
                             MetricType::Gauge)),
      worker_requests_(make_family("efuse_worker_requests_total",
                                   "Requests handled by the worker (classic: thread index; "
                                   "io_uring: queue id).",
                                   MetricType::Counter)),
      worker_in_flight_(make_family("efuse_worker_in_flight",
                                    "Requests the worker is handling right now.",
                                    MetricType::Gauge)),
      worker_wait_(make_family("efuse_worker_wait_seconds_total",
                               "Time the worker spent waiting for the next request.",
                               MetricType::Counter)),
      worker_busy_(make_family("efuse_worker_busy_seconds_total",
                               "Time the worker spent handling requests.",
                               MetricType::Counter)),
      worker_idle_class_(make_family(
          "efuse_worker_idle_class",
          "io_uring queues: 1 while the queue's thread runs SCHED_IDLE (a client it answers "
          "stays on its CPU), 0 while SCHED_BATCH (starved as idle, or EFUSE_IDLE_QUEUES=0).",
          MetricType::Gauge)),
      worker_starved_(make_family(
          "efuse_worker_starved_total",
          "io_uring queues: times the starvation guard found the SCHED_IDLE queue thread "
          "woken but not run (other work had its CPU) and made it SCHED_BATCH for a while.",
          MetricType::Counter)),
      kernel_answered_(make_family(
          "efuse_kernel_answered_total",
          "Requests of the mount answered in the kernel by efused's eBPF handlers (kernel "
          "module tier, efuse.ko), by opcode: they never reached efused. Counted by the module "
          "after it checked the answer (efuse_handler_done tracepoint).",
          MetricType::Counter)),
      kernel_fallbacks_(make_family(
          "efuse_kernel_handler_fallbacks_total",
          "Requests of the mount that reached efused's eBPF handlers but went up to efused, by "
          "opcode and reason: declined (no answer in the maps), no_memory, disconnected, or "
          "an answer the module refused (bad_verdict, bad_nodeid, bad_error, bad_size, "
          "bad_opcode, bad_reply: a bug, never expected).",
          MetricType::Counter)),
      kernel_map_entries_(make_family(
          "efuse_kernel_map_entries",
          "Answers efused keeps in the mount's handler maps, by map: getattr (attributes by "
          "node), lookup (entries by parent and name, negative and positive), xattr "
          "(extended attributes and lists by node and name), entry_lookups (nodes with a "
          "counter of lookups taken from positive entries) and read_blocks (4 KiB blocks of "
          "small files in the READ block cache).",
          MetricType::Gauge)),
      kernel_map_bytes_(make_family(
          "efuse_kernel_map_bytes",
          "Bytes of keys and values in the mount's handler maps, by map (entries times the "
          "entry size; the kernel's own overhead per entry is not included).",
          MetricType::Gauge)),
      kernel_map_skipped_(make_family(
          "efuse_kernel_map_stores_skipped_total",
          "Answers efused sent but did not store for the handlers: a change raced them, the "
          "node was open for writing, or the map was full.",
          MetricType::Counter)),
      kernel_map_drops_(make_family(
          "efuse_kernel_map_drops_total",
          "Handler map entries dropped because something changed (through the mount or "
          "behind efused's back) or the kernel forgot the node.",
          MetricType::Counter)),
      kernel_entry_lookups_(make_family(
          "efuse_kernel_entry_lookups_total",
          "Lookups the kernel took from the handlers' positive LOOKUP answers, as the module "
          "reported them, folded into efused's lookup counts before the FORGETs that "
          "covered them.",
          MetricType::Counter)),
      kernel_releases_(make_family(
          "efuse_kernel_releases_total",
          "RELEASEs of efused's own opens that the RELEASE handler took over in the kernel "
          "(module patch 0015) and efused carried out from the handler's ring buffer: no "
          "request reached efused for them.",
          MetricType::Counter)),
      kernel_read_capacity_(make_family(
          "efuse_kernel_read_cache_capacity_bytes",
          "Bytes of the mount's READ block cache (handler_cache_bytes rounded down to whole "
          "sets of 4 blocks of 4136 bytes, a block and its header); efuse_kernel_map_bytes{map="
          "\"read_blocks\"} is the part in use.",
          MetricType::Gauge)),
      kernel_read_evictions_(make_family(
          "efuse_kernel_read_cache_evictions_total",
          "READ blocks the mount's block cache replaced by another block of their set, the "
          "least recently used first.",
          MetricType::Counter)),
      handler_info_(make_family(
          "efuse_handler_info",
          "The eBPF handler in place for the opcode on the mount (kernel module tier): its "
          "kernel program id, program tag, handler ABI version and object path; always 1. "
          "No series while the opcode has no handler.",
          MetricType::Gauge)),
      handler_loaded_(make_family(
          "efuse_handler_loaded_timestamp_seconds",
          "Unix time the opcode's handler was put in place (its load or swap).",
          MetricType::Gauge)),
      handler_swaps_(make_family(
          "efuse_handler_swaps_total",
          "Handlers put in place for the opcode since the mount started (the first load "
          "counts), from the shipped set, bpf_handlers or SwapHandler.",
          MetricType::Counter)),
      handler_swap_failures_(make_family(
          "efuse_handler_swap_failures_total",
          "Handler loads or swaps refused for the opcode (file ownership or mode, symlink, "
          "handler ABI, opcode, verifier, attach); the handler before stayed in place.",
          MetricType::Counter)),
      handler_removals_(make_family(
          "efuse_handler_removals_total",
          "Handlers removed for the opcode (RemoveHandler, or a reload that dropped it).",
          MetricType::Counter)),
      handler_runs_(make_family(
          "efuse_handler_runs_total",
          "Runs of the opcode's handler programs, every request of every efuse mount they "
          "saw (bpf_prog_info run_cnt, summed over the programs that held the slot); counted "
          "by the kernel only while kernel.bpf_stats_enabled is 1.",
          MetricType::Counter)),
      handler_run_seconds_(make_family(
          "efuse_handler_run_seconds_total",
          "Time spent in the opcode's handler programs (bpf_prog_info run_time_ns, summed "
          "over the programs that held the slot); only while kernel.bpf_stats_enabled is 1.",
          MetricType::Counter)) {}

void MountFamilies::add(const MountView& mount) {
  add_state(mount);
  if (mount.session != nullptr) add_session(mount.name, *mount.session);
  add_workers(mount.name, mount.workers, mount.uring_queues);
  io_path_.add_worker_count(mount.name, mount.worker_count);
  if (mount.up) add_backend(mount.name, mount.backend_metrics);
  if (mount.handlers) {
    add_kernel_tier(mount);
    add_handler_table(mount);
  }
}

void MountFamilies::add_handler_table(const MountView& mount) {
  for (const bpf::HandlerView& h : mount.handler_table) {
    Labels labels = with(mount_label(mount.name), "opcode", fuse::opcode_name(h.opcode));
    if (h.prog_id != 0) {
      Labels info = labels;
      info.push_back({"prog_id", std::to_string(h.prog_id)});
      info.push_back({"tag", h.tag});
      info.push_back({"abi", std::to_string(h.abi)});
      info.push_back({"path", h.path});
      add_gauge(handler_info_, std::move(info), 1);
      add_gauge(handler_loaded_, labels, h.loaded_at);
    }
    add_counter(handler_swaps_, labels, static_cast<double>(h.swaps));
    add_counter(handler_swap_failures_, labels, static_cast<double>(h.failed_swaps));
    add_counter(handler_removals_, labels, static_cast<double>(h.removals));
    add_counter(handler_runs_, labels, static_cast<double>(h.run_count));
    add_counter(handler_run_seconds_, std::move(labels), static_cast<double>(h.run_ns) / 1e9);
  }
}

void MountFamilies::add_kernel_tier(const MountView& mount) {
  const auto& outcomes = mount.handler_outcomes;
  std::map<std::string, std::array<uint64_t, EFUSE_HANDLER_NR_STATS>> by_opcode;
  for (size_t slot = 0; slot < outcomes.size(); ++slot) {
    if (outcomes[slot] == 0) continue;
    auto& counts = by_opcode[fuse::opcode_name(static_cast<uint32_t>(slot / EFUSE_HANDLER_NR_STATS))];
    counts[slot % EFUSE_HANDLER_NR_STATS] += outcomes[slot];
  }
  for (const auto& [opcode, counts] : by_opcode) {
    Labels labels = with(mount_label(mount.name), "opcode", opcode);
    add_counter(kernel_answered_, labels, static_cast<double>(counts[EFUSE_HANDLER_STAT_ANSWERED]));
    for (size_t stat = 0; stat < counts.size(); ++stat) {
      if (stat == EFUSE_HANDLER_STAT_ANSWERED || counts[stat] == 0) continue;
      add_counter(kernel_fallbacks_, with(labels, "reason", bpf::kHandlerStatNames[stat]),
                  static_cast<double>(counts[stat]));
    }
  }
  const auto& a = mount.kernel_answers;
  for (auto [map, entries, size] :
       {std::tuple{"getattr", a.attr_entries, fuse::kAttrEntryBytes},
        std::tuple{"lookup", a.name_entries, fuse::kNameEntryBytes},
        std::tuple{"xattr", a.xattr_entries, fuse::kNameEntryBytes},
        std::tuple{"open", a.open_entries, fuse::kAttrEntryBytes},
        std::tuple{"flush", a.flush_entries, fuse::kAttrEntryBytes},
        std::tuple{"statfs", a.statfs_entries, fuse::kAttrEntryBytes},
        std::tuple{"access", a.access_entries, fuse::kAttrEntryBytes},
        std::tuple{"complete_dirs", a.complete_dirs, fuse::kCompleteDirBytes},
        std::tuple{"dir_names", a.dir_names, fuse::kDirNameBytes},
        std::tuple{"entry_lookups", a.tier_nodes, fuse::kEntryCounterBytes},
        std::tuple{"read_blocks", a.read_blocks, fuse::kReadBlockBytes}}) {
    Labels labels = with(mount_label(mount.name), "map", map);
    add_gauge(kernel_map_entries_, labels, static_cast<double>(entries));
    add_gauge(kernel_map_bytes_, std::move(labels), static_cast<double>(entries * size));
  }
  add_counter(kernel_map_skipped_, mount_label(mount.name), static_cast<double>(a.stores_skipped));
  add_counter(kernel_map_drops_, mount_label(mount.name), static_cast<double>(a.drops));
  add_counter(kernel_entry_lookups_, mount_label(mount.name),
              static_cast<double>(a.tier_lookups));
  add_counter(kernel_releases_, mount_label(mount.name), static_cast<double>(a.kernel_releases));
  if (a.read_capacity > 0) {  // a READ block cache (handler_cache_bytes)
    add_gauge(kernel_read_capacity_, mount_label(mount.name),
              static_cast<double>(a.read_capacity * fuse::kReadBlockBytes));
    add_counter(kernel_read_evictions_, mount_label(mount.name),
                static_cast<double>(a.read_evictions));
  }
}

void MountFamilies::add_backend(const std::string& mount, const std::vector<fs::Metric>& metrics) {
  for (const fs::Metric& m : metrics) {
    auto it = backend_.find(m.name);
    if (it == backend_.end()) {
      auto type = m.type == fs::Metric::Type::Gauge ? MetricType::Gauge : MetricType::Counter;
      it = backend_.emplace(m.name, make_family(m.name, m.help, type)).first;
    }
    Labels labels = mount_label(mount);
    for (const auto& [name, value] : m.labels) labels.push_back({name, value});
    if (m.type == fs::Metric::Type::Gauge)
      add_gauge(it->second, std::move(labels), m.value);
    else
      add_counter(it->second, std::move(labels), m.value);
  }
}

void MountFamilies::add_state(const MountView& mount) {
  add_gauge(up_, {{"mount", mount.name}, {"backend", mount.backend}}, mount.up ? 1 : 0);
  add_counter(start_failures_, mount_label(mount.name),
              static_cast<double>(mount.start_failures));
  add_counter(resumes_, mount_label(mount.name), static_cast<double>(mount.resumes));
  add_gauge(info_,
            {{"mount", mount.name},
             {"mountpoint", mount.mountpoint},
             {"backend", mount.backend},
             {"transport", mount.transport},
             {"io_path", mount.io_path},
             {"io_path_effective", mount.io_path_effective},
             {"kernel_module", mount.kernel_module},
             {"tier", mount.tier}},
            1);
  add_gauge(fallback_, mount_label(mount.name), mount.transport_fallback.empty() ? 0 : 1);
}

void MountFamilies::add_session(const std::string& mount, const fuse::Session& session) {
  add_opcodes(mount, session.stats());
  io_path_.add_blocking(mount, session.offload_report());
  io_path_.add_offload_pool(mount, session.offload_pool_stats(), session.deferred());
  add_counter(decode_errors_, mount_label(mount), static_cast<double>(session.decode_errors()));
  add_counter(passthrough_opens_, mount_label(mount),
              static_cast<double>(session.passthrough_opens()));
  add_counter(passthrough_refusals_, mount_label(mount),
              static_cast<double>(session.passthrough_refusals()));
  add_gauge(kernel_open_holds_, mount_label(mount),
            static_cast<double>(session.kernel_open_holds()));
  add_counter(notifications_, mount_label(mount), static_cast<double>(session.notifications()));
  using Kind = fuse::Session::InvalKind;
  add_counter(invalidation_failures_, with(mount_label(mount), "kind", "inode"),
              static_cast<double>(session.invalidation_failures(Kind::Inode)));
  add_counter(invalidation_failures_, with(mount_label(mount), "kind", "entry"),
              static_cast<double>(session.invalidation_failures(Kind::Entry)));
  if (session.initialized()) add_kernel(mount, session.negotiated());
}

void MountFamilies::add_opcodes(const std::string& mount, const fuse::SessionStats& stats) {
  for (const auto& [opcode, op] : snapshot_opcodes(stats)) {
    add_counter(requests_, with(mount_label(mount), "opcode", opcode),
                static_cast<double>(op.requests));
    add_errors(mount, opcode, op);
    add_latency(mount, opcode, op);
  }
}

void MountFamilies::add_errors(const std::string& mount, const std::string& opcode,
                               const OpcodeSnapshot& op) {
  for (size_t slot = 0; slot < op.errors_by_errno.size(); ++slot) {
    uint64_t n = op.errors_by_errno[slot];
    if (n == 0) continue;
    Labels labels = {{"mount", mount}, {"opcode", opcode},
                     {"errno", errno_label(static_cast<int>(slot))}};
    add_counter(errors_, std::move(labels), static_cast<double>(n));
  }
}

void MountFamilies::add_latency(const std::string& mount, const std::string& opcode,
                                const OpcodeSnapshot& op) {
  prometheus::ClientMetric m;
  m.label = with(mount_label(mount), "opcode", opcode);
  m.histogram = latency_histogram(op);
  duration_.metric.push_back(std::move(m));
}

void MountFamilies::add_kernel(const std::string& mount, const fuse::Negotiated& negotiated) {
  for (const KernelFeature& f : kKernelFeatures) {
    Labels labels = with(mount_label(mount), "feature", f.name);
    add_gauge(feature_, labels, (negotiated.flags & f.flag) != 0 ? 1 : 0);
    add_gauge(feature_offered_, std::move(labels),
              (negotiated.kernel_flags & f.flag) != 0 ? 1 : 0);
  }
  add_gauge(protocol_minor_, mount_label(mount), negotiated.minor);
  add_gauge(max_write_, mount_label(mount), negotiated.max_write);
}

// Worker labels: "uring-<qid>" for io_uring queues (one per CPU), "classic-<n>" for threads
// reading /dev/fuse.
void MountFamilies::add_workers(const std::string& mount,
                                const std::vector<const fuse::WorkerStats*>& workers,
                                unsigned uring_queues) {
  for (size_t i = 0; i < workers.size(); ++i) {
    const fuse::WorkerStats* w = workers[i];
    if (w == nullptr) continue;
    std::string name = i < uring_queues ? "uring-" + std::to_string(i)
                                        : "classic-" + std::to_string(i - uring_queues);
    Labels labels = with(mount_label(mount), "worker", name);
    add_counter(worker_requests_, labels, static_cast<double>(load(w->requests)));
    add_gauge(worker_in_flight_, labels, w->in_flight.load(std::memory_order_relaxed));
    add_counter(worker_wait_, labels, seconds(load(w->wait_ns)));
    if (int c = w->sched_class.load(std::memory_order_relaxed); c >= 0 && i < uring_queues) {
      add_gauge(worker_idle_class_, labels, c);
      add_counter(worker_starved_, labels, static_cast<double>(load(w->starved)));
    }
    add_counter(worker_busy_, std::move(labels), seconds(load(w->busy_ns)));
  }
}

void MountFamilies::append_to(std::vector<prometheus::MetricFamily>& out) && {
  for (prometheus::MetricFamily* f :
       {&up_, &start_failures_, &resumes_, &info_, &fallback_, &notifications_, &invalidation_failures_, &requests_, &errors_, &duration_, &decode_errors_,
        &passthrough_opens_, &kernel_open_holds_, &passthrough_refusals_, &feature_, &feature_offered_,
        &protocol_minor_, &max_write_, &worker_requests_, &worker_in_flight_, &worker_wait_,
        &worker_busy_, &worker_idle_class_, &worker_starved_, &kernel_answered_, &kernel_fallbacks_, &kernel_map_entries_,
        &kernel_map_bytes_, &kernel_map_skipped_, &kernel_map_drops_, &kernel_entry_lookups_, &kernel_releases_,
        &kernel_read_capacity_, &kernel_read_evictions_,
        &handler_info_, &handler_loaded_, &handler_swaps_, &handler_swap_failures_,
        &handler_removals_, &handler_runs_, &handler_run_seconds_}) {
    append_nonempty(out, std::move(*f));
  }
  for (auto& [name, family] : backend_) append_nonempty(out, std::move(family));
  std::move(io_path_).append_to(out);
}

}  // namespace efuse::telemetry

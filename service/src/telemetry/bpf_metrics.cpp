#include "telemetry/bpf_metrics.h"

#include <filesystem>
#include <limits>
#include <utility>

#include "efuse_telemetry.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"
#include "telemetry/family.h"

// Every opcode of the one opcode table (fuse/opcode_list.h) has a per-opcode slot of its own
// on the BPF side, and the last slot stays for the opcodes folded into it, named "unknown".
static_assert(fuse::kernel::kMaxOpcode < EFUSE_BPF_OPCODE_SLOTS - 1,
              "EFUSE_BPF_OPCODE_SLOTS (bpf/efuse_telemetry.h) is too small for the opcode table");

namespace efuse::telemetry {
namespace {

using prometheus::MetricType;

// Slots below this one are folded into its bucket (le = 2^(kFirstSlot+1) ns = ~1 µs):
// the tracepoints cannot resolve anything that short anyway.
constexpr int kFirstSlot = 9;
constexpr int kLastBoundedSlot = EFUSE_BPF_LATENCY_SLOTS - 2;  // le = 2^35 ns; then +Inf

std::string normalize(const std::string& path) {
  std::string p = std::filesystem::path(path).lexically_normal().string();
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

struct ConnLabels {
  std::string mount;
  std::string fstype;
};

ConnLabels labels_for(uint32_t conn, const std::map<uint32_t, bpf::FuseMount>& mounts,
                      const std::map<std::string, std::string>& own_by_mountpoint) {
  auto it = mounts.find(conn);
  if (it == mounts.end()) return {"connection:" + bpf::connection_name(conn), "unknown"};
  auto own = own_by_mountpoint.find(normalize(it->second.mountpoint));
  if (own != own_by_mountpoint.end()) return {own->second, it->second.fstype};
  return {it->second.mountpoint, it->second.fstype};
}

std::string queue_label(uint32_t qid) {
  return qid == EFUSE_BPF_QUEUE_CLASSIC ? "classic" : std::to_string(qid);
}

// Series keyed by their label values, so that two connections or opcode slots mapping to
// the same labels ("unknown" opcodes, a mountpoint mounted twice) add up instead of
// producing duplicate series.
template <class V>
using Series = std::map<std::vector<std::string>, V>;

struct Hist {
  __u64 slots[EFUSE_BPF_LATENCY_SLOTS] = {};
  uint64_t sum_ns = 0;
  void add(const __u64 (&s)[EFUSE_BPF_LATENCY_SLOTS], uint64_t sum) {
    for (int i = 0; i < EFUSE_BPF_LATENCY_SLOTS; ++i) slots[i] += s[i];
    sum_ns += sum;
  }
};

Labels zip(const std::vector<const char*>& names, const std::vector<std::string>& values) {
  Labels out;
  for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i], values[i]});
  return out;
}

prometheus::MetricFamily counters(std::string name, std::string help,
                                  const std::vector<const char*>& names,
                                  const Series<uint64_t>& series, MetricType type) {
  prometheus::MetricFamily f = make_family(std::move(name), std::move(help), type);
  for (const auto& [values, v] : series) {
    if (type == MetricType::Counter)
      add_counter(f, zip(names, values), static_cast<double>(v));
    else
      add_gauge(f, zip(names, values), static_cast<double>(v));
  }
  return f;
}

prometheus::MetricFamily histograms(std::string name, std::string help,
                                    const std::vector<const char*>& names,
                                    const Series<Hist>& series) {
  prometheus::MetricFamily f = make_family(std::move(name), std::move(help), MetricType::Histogram);
  for (const auto& [values, h] : series) {
    prometheus::ClientMetric m;
    m.label = zip(names, values);
    m.histogram = log2_histogram(h.slots, h.sum_ns);
    f.metric.push_back(std::move(m));
  }
  return f;
}

void append_health(const bpf::Status& status, const efuse_health* health,
                   std::vector<prometheus::MetricFamily>& out) {
  prometheus::MetricFamily up = make_family(
      "efuse_bpf_up",
      "Whether efused's eBPF request telemetry is loaded, attached and passing its self-check "
      "(1) or not (0: efuse_bpf_off_reason and the log say why).",
      MetricType::Gauge);
  add_gauge(up, {}, status.up ? 1 : 0);
  out.push_back(std::move(up));
  prometheus::MetricFamily level = make_family(
      "efuse_bpf_level",
      "The telemetry level running (1) among full (requests and the context switches they "
      "cost), requests (counts, errors, latency, in flight) and off; set by telemetry: in "
      "the configuration, live on reload.",
      MetricType::Gauge);
  for (bpf::Level l : {bpf::Level::Full, bpf::Level::Requests, bpf::Level::Off})
    add_gauge(level, {{"level", bpf::level_name(l)}}, status.level == bpf::level_name(l) ? 1 : 0);
  out.push_back(std::move(level));
  prometheus::MetricFamily sampling = make_family(
      "efuse_bpf_latency_sample_every",
      "telemetry_sample_every: requests sent in sampling windows that cover 1 in this many "
      "of the time are timed; the kernel-side latency histograms and the client context "
      "switches come from those; request, error, in-flight and per-queue request counts are "
      "exact.",
      MetricType::Gauge);
  add_gauge(sampling, {}, status.sample_every);
  out.push_back(std::move(sampling));
  prometheus::MetricFamily windows = make_family(
      "efuse_bpf_sample_windows_total",
      "Sampling windows opened: times the fuse_request_send program was attached to time the "
      "requests sent while it is (telemetry_sample_every 1: once, for good).",
      MetricType::Counter);
  add_counter(windows, {}, static_cast<double>(status.sample_windows));
  out.push_back(std::move(windows));
  prometheus::MetricFamily attached = make_family(
      "efuse_bpf_programs_attached",
      "BPF programs in service (fuse_request_end, attached while the telemetry runs, and "
      "fuse_request_send, attached in the sampling windows: 2 when the telemetry runs).",
      MetricType::Gauge);
  add_gauge(attached, {}, status.programs_attached);
  out.push_back(std::move(attached));
  prometheus::MetricFamily failures = make_family(
      "efuse_bpf_load_failures_total",
      "Attempts to load or attach BPF programs that the kernel refused (a kernel without BTF "
      "or FUSE tracepoints is skipped, not counted).", MetricType::Counter);
  add_counter(failures, {}, static_cast<double>(status.load_failures));
  out.push_back(std::move(failures));
  if (!status.up && !status.off.empty()) {
    prometheus::MetricFamily off = make_family(
        "efuse_bpf_off_reason",
        "Why the eBPF telemetry is off (1 for the one reason, present while efuse_bpf_up is 0): "
        "disabled (by the operator), unsupported (no BTF or no FUSE tracepoints: Linux < 6.12), "
        "refused (the kernel refused to load or attach: privileges, verifier), mismatch (the "
        "self-check found the tracepoints' sends and ends no longer pair; programs detached).",
        MetricType::Gauge);
    add_gauge(off, {{"reason", status.off}}, 1);
    out.push_back(std::move(off));
  }
  if (health == nullptr) return;
  prometheus::MetricFamily dropped = make_family(
      "efuse_bpf_events_dropped_total",
      "Tracepoint events the BPF programs could not account, by reason (inflight_full: a "
      "sampled request not timed, duplicate_send: a request sent at the address of a sampled "
      "one never seen ending, stats_full).",
      MetricType::Counter);
#define EFUSE_BPF_HEALTH_SERIES(name, reason, help) \
  add_counter(dropped, {{"reason", reason}}, static_cast<double>(health->name));
  EFUSE_BPF_HEALTH_COUNTERS(EFUSE_BPF_HEALTH_SERIES)
#undef EFUSE_BPF_HEALTH_SERIES
  out.push_back(std::move(dropped));
}

}  // namespace

std::vector<double> log2_bucket_bounds() {
  std::vector<double> bounds;
  for (int slot = kFirstSlot; slot <= kLastBoundedSlot; ++slot)
    bounds.push_back(static_cast<double>(uint64_t{1} << (slot + 1)) / 1e9);
  return bounds;
}

prometheus::ClientMetric::Histogram log2_histogram(const __u64 (&slots)[EFUSE_BPF_LATENCY_SLOTS],
                                                   uint64_t sum_ns) {
  prometheus::ClientMetric::Histogram h;
  uint64_t cumulative = 0;
  for (int slot = 0; slot < kFirstSlot; ++slot) cumulative += slots[slot];
  for (int slot = kFirstSlot; slot <= kLastBoundedSlot; ++slot) {
    cumulative += slots[slot];
    h.bucket.push_back({cumulative, static_cast<double>(uint64_t{1} << (slot + 1)) / 1e9});
  }
  for (int slot = kLastBoundedSlot + 1; slot < EFUSE_BPF_LATENCY_SLOTS; ++slot)
    cumulative += slots[slot];
  h.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
  h.sample_count = cumulative;  // +Inf == _count by construction
  h.sample_sum = static_cast<double>(sum_ns) / 1e9;
  return h;
}

void append_bpf_families(const bpf::Status& status, const bpf::Snapshot& snapshot,
                         const std::map<uint32_t, bpf::FuseMount>& mounts,
                         const std::vector<OwnMount>& own,
                         std::vector<prometheus::MetricFamily>& out) {
  append_health(status, status.up ? &snapshot.health : nullptr, out);
  if (!status.up) return;

  std::map<std::string, std::string> own_by_mountpoint;
  for (const OwnMount& m : own) own_by_mountpoint[normalize(m.mountpoint)] = m.name;

  Series<uint64_t> requests, errors, in_flight, queue_requests, switches;
  Series<Hist> latency, queue_latency;
  for (const auto& [conn, c] : snapshot.conns) {
    ConnLabels l = labels_for(conn, mounts, own_by_mountpoint);
    // Counts: every request. Latency: the sampled ones (efuse_bpf_latency_sample_every).
    for (const auto& [opcode, n] : c.counts) {
      std::vector<std::string> key = {l.mount, l.fstype, fuse::opcode_name(opcode)};
      requests[key] += n.ended;
      errors[key] += n.errors;
    }
    for (const auto& [opcode, op] : c.ops)
      latency[{l.mount, l.fstype, fuse::opcode_name(opcode)}].add(op.latency, op.latency_sum_ns);
    for (const auto& [qid, n] : c.queue_counts) queue_requests[{l.mount, queue_label(qid)}] += n.ended;
    for (const auto& [qid, q] : c.queues)
      queue_latency[{l.mount, queue_label(qid)}].add(q.latency, q.latency_sum_ns);
    if (!c.ops.empty() || !c.queues.empty()) {
#define EFUSE_BPF_CTXSW_SERIES(name, side, kind) switches[{l.mount, side, kind}] += c.ctxsw.name;
      EFUSE_BPF_CTXSW_COUNTERS(EFUSE_BPF_CTXSW_SERIES)
#undef EFUSE_BPF_CTXSW_SERIES
    }
  }

  // Every connection on the host has a series, 0 when idle.
  for (const auto& [conn, n] : snapshot.in_flight) {
    ConnLabels l = labels_for(conn, mounts, own_by_mountpoint);
    in_flight[{l.mount, l.fstype}] += n;
  }

  const std::vector<const char*> op_labels = {"mount", "fstype", "opcode"};
  append_nonempty(out, counters("efuse_kernel_requests_total",
                                "FUSE requests the kernel sent to the file system's server "
                                "(upcalls), counted when they end (fuse_request_end tracepoint); "
                                "every FUSE mount on the host.",
                                op_labels, requests, MetricType::Counter));
  append_nonempty(out, counters("efuse_kernel_request_errors_total",
                                "FUSE requests that ended with an error in the reply header "
                                "(out.h.error != 0), seen at fuse_request_end.",
                                op_labels, errors, MetricType::Counter));
  append_nonempty(out, counters("efuse_kernel_requests_in_flight",
                                "FUSE requests the kernel holds for the mount's server: sent and "
                                "not ended, or waiting for a background slot (fusectl's "
                                "`waiting`, the kernel's own count); absent when fusectl cannot "
                                "be read (the log says why).",
                                {"mount", "fstype"}, in_flight, MetricType::Gauge));
  append_nonempty(out, histograms("efuse_kernel_request_duration_seconds",
                                  "Kernel-side FUSE request latency, fuse_request_send to "
                                  "fuse_request_end (queueing in the kernel, the server's "
                                  "processing and the reply), of the sampled requests: 1 in "
                                  "efuse_bpf_latency_sample_every. _count counts sampled "
                                  "requests; take request rates from efuse_kernel_requests_total.",
                                  op_labels, latency));
  append_nonempty(out, counters("efuse_kernel_queue_requests_total",
                                "FUSE requests that ended, by the queue they travelled on: the "
                                "io_uring queue id, or \"classic\" for /dev/fuse.",
                                {"mount", "queue"}, queue_requests, MetricType::Counter));
  append_nonempty(out, histograms("efuse_kernel_queue_request_duration_seconds",
                                  "Kernel-side FUSE request latency of the sampled requests (1 "
                                  "in efuse_bpf_latency_sample_every) by the queue the request "
                                  "travelled on: the io_uring queue id, or \"classic\" for "
                                  "/dev/fuse. Rates: efuse_kernel_queue_requests_total.",
                                  {"mount", "queue"}, queue_latency));
  append_nonempty(out, counters("efuse_context_switches_total",
                                "Context switches of FUSE server threads (side=\"daemon\": "
                                "threads that completed requests of the mount, every switch, "
                                "counted at their sampled replies) and of client threads while "
                                "a sampled request of the mount was outstanding "
                                "(side=\"client\": per request, divide by "
                                "efuse_kernel_request_duration_seconds_count); "
                                "kind=\"involuntary\" when preempted.",
                                {"mount", "side", "kind"}, switches, MetricType::Counter));
}

void append_bpf_families(const bpf::Telemetry* telemetry, const std::vector<OwnMount>& own,
                         std::vector<prometheus::MetricFamily>& out) {
  if (telemetry == nullptr) {
    append_bpf_families(bpf::Status{}, bpf::Snapshot{}, {}, own, out);
    return;
  }
  bpf::Snapshot snap = telemetry->snapshot();
  std::map<uint32_t, bpf::FuseMount> mounts;
  if (telemetry->up()) mounts = bpf::read_fuse_mounts();
  append_bpf_families(telemetry->status(), snap, mounts, own, out);
}

}  // namespace efuse::telemetry

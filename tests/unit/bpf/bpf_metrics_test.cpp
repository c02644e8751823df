// telemetry/bpf_metrics: BPF snapshots to Prometheus families (labels, buckets, health).
#include "telemetry/bpf_metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>

namespace efuse::telemetry {
namespace {

using Labels = std::map<std::string, std::string>;

const prometheus::MetricFamily* find(const std::vector<prometheus::MetricFamily>& fams,
                                     const std::string& name) {
  for (const auto& f : fams)
    if (f.name == name) return &f;
  return nullptr;
}

Labels labels(const prometheus::ClientMetric& m) {
  Labels out;
  for (const auto& l : m.label) out[l.name] = l.value;
  return out;
}

const prometheus::ClientMetric* series(const std::vector<prometheus::MetricFamily>& fams,
                                       const std::string& name, const Labels& want) {
  const prometheus::MetricFamily* f = find(fams, name);
  if (f == nullptr) return nullptr;
  for (const auto& m : f->metric)
    if (labels(m) == want) return &m;
  return nullptr;
}

constexpr uint32_t kOwn = bpf::connection_id(0, 39);
constexpr uint32_t kForeign = bpf::connection_id(0, 51);
constexpr uint32_t kUnmounted = bpf::connection_id(0, 77);
constexpr uint32_t kStuck = bpf::connection_id(0, 78);
constexpr uint32_t kLookup = 1, kRead = 15;

bpf::Status up() { return bpf::Status{true, 2, 0, "", "vmlinux", "", "full", 4}; }

std::map<uint32_t, bpf::FuseMount> mounts() {
  return {{kOwn, {"/tmp/x/mnt", "fuse.efuse"}}, {kForeign, {"/tmp/x/ll", "fuse.passthrough_ll"}}};
}

std::vector<OwnMount> own() { return {{"data", "/tmp/x/mnt/"}}; }  // trailing slash on purpose

efuse_counts counts(uint64_t ended, uint64_t errors) {
  efuse_counts c{};
  c.ended = ended;
  c.errors = errors;
  return c;
}

// Every request counted at its end (counts), some timed (ops, queues: 10 of the 41 LOOKUPs).
bpf::Snapshot snapshot() {
  bpf::Snapshot s;
  s.conns[kOwn].counts[kLookup] = counts(41, 2);
  s.conns[kOwn].queue_counts[EFUSE_BPF_QUEUE_CLASSIC] = counts(41, 2);
  s.in_flight[kOwn] = 1;
  efuse_stats lookup{};
  lookup.samples = 10;
  lookup.latency_sum_ns = 10 * 3000;
  lookup.latency[11] = 10;  // [2048, 4096) ns
  s.conns[kOwn].ops[kLookup] = lookup;
  efuse_stats classic{};
  classic.samples = 10;
  classic.latency[11] = 10;
  s.conns[kOwn].queues[EFUSE_BPF_QUEUE_CLASSIC] = classic;
  s.conns[kOwn].ctxsw.daemon_voluntary = 7;
  s.conns[kOwn].ctxsw.client_involuntary = 1;

  s.conns[kForeign].counts[kRead] = counts(4, 0);
  s.conns[kForeign].queue_counts[1] = counts(4, 0);
  s.in_flight[kForeign] = 0;
  efuse_stats read{};
  read.samples = 1;
  read.latency[20] = 1;
  s.conns[kForeign].ops[kRead] = read;
  s.conns[kForeign].queues[1] = read;
  // Two opcode slots efused has no name for add up into one "unknown" series.
  s.conns[kForeign].counts[7] = counts(1, 0);
  s.conns[kForeign].counts[EFUSE_BPF_OPCODE_SLOTS - 1] = counts(1, 0);
  s.conns[kForeign].counts[kLookup] = counts(3, 0);
  // A connection with requests in flight and none ended yet (a stopped server): in
  // fusectl, not in the maps.
  s.in_flight[kStuck] = 2;

  s.conns[kUnmounted].counts[kLookup] = counts(41, 2);
  s.conns[kUnmounted].ops[kLookup] = lookup;
  s.health.duplicate_send = 3;
  return s;
}

TEST(BpfMetrics, BucketBoundsArePowersOfTwoNanosecondsInSeconds) {
  std::vector<double> b = log2_bucket_bounds();
  ASSERT_EQ(b.size(), 26u);
  EXPECT_DOUBLE_EQ(b.front(), 1024e-9);
  EXPECT_DOUBLE_EQ(b.back(), 34.359738368);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_DOUBLE_EQ(b[i], 2 * b[i - 1]);
}

TEST(BpfMetrics, Log2HistogramIsCumulativeAndFoldsTheEnds) {
  __u64 slots[EFUSE_BPF_LATENCY_SLOTS] = {};
  slots[0] = 1;   // 0-1 ns: folded into the first bucket (le 1.024e-6)
  slots[9] = 2;   // [512, 1024) ns: first bucket
  slots[10] = 3;  // [1024, 2048) ns: le 2.048e-6
  slots[EFUSE_BPF_LATENCY_SLOTS - 1] = 4;  // >= 2^35 ns: +Inf only
  auto h = log2_histogram(slots, 5'000'000'000ULL);
  ASSERT_EQ(h.bucket.size(), 27u);
  EXPECT_EQ(h.bucket[0].cumulative_count, 3u);
  EXPECT_DOUBLE_EQ(h.bucket[0].upper_bound, 1.024e-6);
  EXPECT_EQ(h.bucket[1].cumulative_count, 6u);
  EXPECT_EQ(h.bucket[25].cumulative_count, 6u);
  EXPECT_TRUE(std::isinf(h.bucket[26].upper_bound));
  EXPECT_EQ(h.bucket[26].cumulative_count, 10u);
  EXPECT_EQ(h.sample_count, 10u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 5.0);
}

TEST(BpfMetrics, OwnMountsByNameOthersByMountpointUnmountedByConnection) {
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(up(), snapshot(), mounts(), own(), out);

  auto* own_lookup = series(out, "efuse_kernel_requests_total",
                            {{"mount", "data"}, {"fstype", "fuse.efuse"}, {"opcode", "lookup"}});
  ASSERT_NE(own_lookup, nullptr);
  EXPECT_EQ(own_lookup->counter.value, 41);  // every request, not the 10 timed
  auto* foreign_read =
      series(out, "efuse_kernel_requests_total",
             {{"mount", "/tmp/x/ll"}, {"fstype", "fuse.passthrough_ll"}, {"opcode", "read"}});
  ASSERT_NE(foreign_read, nullptr);
  EXPECT_EQ(foreign_read->counter.value, 4);
  auto* unknown =
      series(out, "efuse_kernel_requests_total",
             {{"mount", "/tmp/x/ll"}, {"fstype", "fuse.passthrough_ll"}, {"opcode", "unknown"}});
  ASSERT_NE(unknown, nullptr);
  EXPECT_EQ(unknown->counter.value, 2);  // slots 7 and 63 summed, no duplicate series
  EXPECT_NE(series(out, "efuse_kernel_requests_total",
                   {{"mount", "connection:0:77"}, {"fstype", "unknown"}, {"opcode", "lookup"}}),
            nullptr);
}

TEST(BpfMetrics, ErrorsInFlightLatencyQueuesAndSwitches) {
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(up(), snapshot(), mounts(), own(), out);
  Labels own_lookup = {{"mount", "data"}, {"fstype", "fuse.efuse"}, {"opcode", "lookup"}};
  ASSERT_NE(series(out, "efuse_kernel_request_errors_total", own_lookup), nullptr);
  EXPECT_EQ(series(out, "efuse_kernel_request_errors_total", own_lookup)->counter.value, 2);
  // In flight: per connection, from fusectl; every connection has a series, 0 when idle.
  Labels own_mount = {{"mount", "data"}, {"fstype", "fuse.efuse"}};
  ASSERT_NE(series(out, "efuse_kernel_requests_in_flight", own_mount), nullptr);
  EXPECT_EQ(series(out, "efuse_kernel_requests_in_flight", own_mount)->gauge.value, 1);
  Labels foreign_mount = {{"mount", "/tmp/x/ll"}, {"fstype", "fuse.passthrough_ll"}};
  ASSERT_NE(series(out, "efuse_kernel_requests_in_flight", foreign_mount), nullptr);
  EXPECT_EQ(series(out, "efuse_kernel_requests_in_flight", foreign_mount)->gauge.value, 0);
  Labels stuck = {{"mount", "connection:0:78"}, {"fstype", "unknown"}};
  ASSERT_NE(series(out, "efuse_kernel_requests_in_flight", stuck), nullptr);
  EXPECT_EQ(series(out, "efuse_kernel_requests_in_flight", stuck)->gauge.value, 2);
  EXPECT_EQ(series(out, "efuse_kernel_requests_in_flight", own_lookup), nullptr);  // no opcode

  auto* lat = series(out, "efuse_kernel_request_duration_seconds", own_lookup);
  ASSERT_NE(lat, nullptr);
  EXPECT_EQ(lat->histogram.sample_count, 10u);  // the timed requests only
  EXPECT_DOUBLE_EQ(lat->histogram.sample_sum, 30e-6);
  EXPECT_EQ(lat->histogram.bucket[1].cumulative_count, 0u);   // le 2.048 µs
  EXPECT_EQ(lat->histogram.bucket[2].cumulative_count, 10u);  // le 4.096 µs

  EXPECT_NE(series(out, "efuse_kernel_queue_request_duration_seconds",
                   {{"mount", "data"}, {"queue", "classic"}}),
            nullptr);
  EXPECT_NE(series(out, "efuse_kernel_queue_request_duration_seconds",
                   {{"mount", "/tmp/x/ll"}, {"queue", "1"}}),
            nullptr);
  auto* q = series(out, "efuse_kernel_queue_requests_total", {{"mount", "data"}, {"queue", "classic"}});
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->counter.value, 41);  // every ended request, not the 10 timed
  ASSERT_NE(series(out, "efuse_kernel_queue_requests_total", {{"mount", "/tmp/x/ll"}, {"queue", "1"}}),
            nullptr);

  auto* dv = series(out, "efuse_context_switches_total",
                    {{"mount", "data"}, {"side", "daemon"}, {"kind", "voluntary"}});
  ASSERT_NE(dv, nullptr);
  EXPECT_EQ(dv->counter.value, 7);
  auto* ci = series(out, "efuse_context_switches_total",
                    {{"mount", "data"}, {"side", "client"}, {"kind", "involuntary"}});
  ASSERT_NE(ci, nullptr);
  EXPECT_EQ(ci->counter.value, 1);
}

TEST(BpfMetrics, HealthWhenUp) {
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(up(), snapshot(), mounts(), own(), out);
  ASSERT_NE(series(out, "efuse_bpf_up", {}), nullptr);
  EXPECT_EQ(series(out, "efuse_bpf_up", {})->gauge.value, 1);
  EXPECT_EQ(series(out, "efuse_bpf_programs_attached", {})->gauge.value, 2);
  EXPECT_EQ(series(out, "efuse_bpf_load_failures_total", {})->counter.value, 0);
  auto* duplicate = series(out, "efuse_bpf_events_dropped_total", {{"reason", "duplicate_send"}});
  ASSERT_NE(duplicate, nullptr);
  EXPECT_EQ(duplicate->counter.value, 3);
  auto* every = series(out, "efuse_bpf_latency_sample_every", {});
  ASSERT_NE(every, nullptr);
  EXPECT_EQ(every->gauge.value, 4);
  bpf::Status st = up();
  st.sample_windows = 12;
  out.clear();
  append_bpf_families(st, snapshot(), mounts(), own(), out);
  auto* windows = series(out, "efuse_bpf_sample_windows_total", {});
  ASSERT_NE(windows, nullptr);
  EXPECT_EQ(windows->counter.value, 12);
}

TEST(BpfMetrics, NoInFlightSeriesWithoutFusectl) {
  bpf::Snapshot s = snapshot();
  s.in_flight.clear();
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(up(), s, mounts(), own(), out);
  for (const auto& f : out) EXPECT_NE(f.name, "efuse_kernel_requests_in_flight");
  EXPECT_NE(series(out, "efuse_kernel_requests_total",
                   {{"mount", "data"}, {"fstype", "fuse.efuse"}, {"opcode", "lookup"}}),
            nullptr);
}

TEST(BpfMetrics, LevelSaysWhichRuns) {
  for (const char* running : {"full", "requests", "off"}) {
    bpf::Status st = up();
    st.level = running;
    std::vector<prometheus::MetricFamily> out;
    append_bpf_families(st, snapshot(), mounts(), own(), out);
    for (const char* l : {"full", "requests", "off"}) {
      auto* s = series(out, "efuse_bpf_level", {{"level", l}});
      ASSERT_NE(s, nullptr) << l;
      EXPECT_EQ(s->gauge.value, std::string(l) == running ? 1 : 0) << running << " " << l;
    }
  }
}

TEST(BpfMetrics, OffReasonOnlyWhileDown) {
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(up(), snapshot(), mounts(), own(), out);
  EXPECT_EQ(find(out, "efuse_bpf_off_reason"), nullptr);
  out.clear();
  append_bpf_families(bpf::Status{false, 0, 0, "sends and ends stopped matching", "vmlinux",
                                  bpf::kOffMismatch},
                      snapshot(), mounts(), own(), out);
  EXPECT_EQ(series(out, "efuse_bpf_up", {})->gauge.value, 0);
  ASSERT_NE(series(out, "efuse_bpf_off_reason", {{"reason", "mismatch"}}), nullptr);
  EXPECT_EQ(find(out, "efuse_kernel_requests_total"), nullptr);  // no wrong numbers served
}

TEST(BpfMetrics, DownExportsOnlyHealth) {
  std::vector<prometheus::MetricFamily> out;
  append_bpf_families(bpf::Status{false, 0, 1, "verifier", "", bpf::kOffRefused}, snapshot(),
                      mounts(), own(), out);
  ASSERT_EQ(out.size(), 7u);
  EXPECT_EQ(series(out, "efuse_bpf_level", {{"level", "off"}})->gauge.value, 1);
  EXPECT_EQ(series(out, "efuse_bpf_level", {{"level", "full"}})->gauge.value, 0);
  EXPECT_EQ(series(out, "efuse_bpf_up", {})->gauge.value, 0);
  EXPECT_EQ(series(out, "efuse_bpf_load_failures_total", {})->counter.value, 1);
  ASSERT_NE(series(out, "efuse_bpf_off_reason", {{"reason", "refused"}}), nullptr);
  EXPECT_EQ(series(out, "efuse_bpf_off_reason", {{"reason", "refused"}})->gauge.value, 1);
  EXPECT_EQ(find(out, "efuse_kernel_requests_total"), nullptr);

  out.clear();
  append_bpf_families(nullptr, own(), out);  // no telemetry object at all
  ASSERT_NE(series(out, "efuse_bpf_up", {}), nullptr);
  EXPECT_EQ(series(out, "efuse_bpf_up", {})->gauge.value, 0);
}

}  // namespace
}  // namespace efuse::telemetry

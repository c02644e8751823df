// telemetry::Collector over a real fuse::Session driven by real requests.
#include <prometheus/text_serializer.h>

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <stdexcept>
#include <thread>

#include "fs/memory/memory_fs.h"
#include "fs/passthrough/backend_stats.h"
#include "fuse/stats.h"
#include "metrics_fixture.h"
#include "telemetry/collector.h"
#include "telemetry/errno_names.h"
#include "telemetry/kernel_features.h"
#include "telemetry/mount_metrics.h"
#include "telemetry/process_metrics.h"

namespace efuse::telemetry::testing {
namespace {

using Labels = std::map<std::string, std::string>;

constexpr uint32_t code(k::Opcode op) { return static_cast<uint32_t>(op); }
constexpr uint32_t kUnassignedOpcode = 7;  // FUSE_GETDIR once; no name, no handler
constexpr uint32_t kFutureOpcode = 99;     // beyond kMaxOpcode

std::string render(const std::vector<prometheus::MetricFamily>& families) {
  return prometheus::TextSerializer().Serialize(families);
}

// Three mounts: "data" live over a driven Session with two workers, "broken" failed to start,
// "scratch" a live memory mount without a session.
class MetricsCollector : public ::testing::Test {
 protected:
  void SetUp() override {
    session_.init();
    for (int i = 0; i < 3; ++i) session_.lookup("present");
    for (int i = 0; i < 2; ++i) session_.lookup("secret");  // EACCES
    session_.getattr();
    session_.send(kUnassignedOpcode, k::kRootId, "");  // ENOSYS, "unknown"
    session_.send(kFutureOpcode, k::kRootId, "");      // ENOSYS, "unknown"
    std::string truncated = request(code(k::Opcode::Getattr), k::kRootId, 99, "");
    session_.send_raw(truncated + "x");  // header length disagrees: a decode error

    workers_[0].requests = 5;
    workers_[0].wait_ns = 2'000'000'000;
    workers_[0].busy_ns = 1'500'000'000;
    workers_[1].requests = 4;
    workers_[1].in_flight = 1;

    MountView data;
    data.name = "data";
    data.mountpoint = "/srv/data";
    data.backend = "passthrough";
    data.transport = "classic";
    data.io_path = "passthrough";
    data.io_path_effective = "cache";  // the kernel did not grant passthrough
    data.kernel_module = "auto";
    data.tier = "module";
    data.handlers = true;
    data.handler_outcomes.assign(EFUSE_HANDLER_OUTCOME_SLOTS, 0);
    auto outcome = [&](k::Opcode op, int stat) -> uint64_t& {
      return data.handler_outcomes[code(op) * EFUSE_HANDLER_NR_STATS + stat];
    };
    outcome(k::Opcode::Getattr, EFUSE_HANDLER_STAT_ANSWERED) = 40;
    outcome(k::Opcode::Getattr, EFUSE_HANDLER_STAT_DECLINED) = 7;
    outcome(k::Opcode::Lookup, EFUSE_HANDLER_STAT_ANSWERED) = 12;
    outcome(k::Opcode::Lookup, EFUSE_HANDLER_STAT_BAD_REPLY) = 1;
    outcome(k::Opcode::Read, EFUSE_HANDLER_STAT_DECLINED) = 9;
    data.kernel_answers = {.attr_entries = 3, .name_entries = 2, .stores_skipped = 5,
                           .drops = 6};
    // The handler table (issue 20): LOOKUP in place after 3 swaps and a refused one; GETATTR
    // removed (counters stay, no info series).
    bpf::HandlerView lookup;
    lookup.opcode = code(k::Opcode::Lookup);
    lookup.path = "/usr/lib/efuse/handlers/efuse_lookup.bpf.o";
    lookup.prog_id = 42;
    lookup.tag = "0123456789abcdef";
    lookup.abi = 2;
    lookup.loaded_at = 1700000000.5;
    lookup.swaps = 3;
    lookup.failed_swaps = 1;
    lookup.run_ns = 2'500'000'000;
    lookup.run_count = 1000;
    bpf::HandlerView getattr;
    getattr.opcode = code(k::Opcode::Getattr);
    getattr.swaps = 1;
    getattr.removals = 1;
    data.handler_table = {getattr, lookup};
    data.up = true;
    data.session = &session_.session();
    data.workers = {&workers_[0], &workers_[1]};
    data.start_failures = 1;
    data.backend_metrics = fs::passthrough::metrics_of(
        {.inodes = 700, .fds = 500, .evictions = 300, .reopens = 90, .reopen_failures = 2,
         .listing_drops = 4, .shared_opens = 5, .watched_dirs = 60,
         .watch_fanotify_dirs = 58, .watch_muted_files = 6, .watch_events = 1000,
         .watch_invalidations = 70, .watch_overflows = 1, .watch_failures = 3},
        0);
    // One epoch decided by the adaptive policy: a small file's first open (the guess,
    // cache) that was served one READ taking 5 us in efused.
    accel::IoPathPolicy policy;
    accel::FileIo file;
    accel::OpenFacts facts;
    facts.size = 4096;
    facts.passthrough_available = true;
    EXPECT_EQ(policy.open(file, facts, 0), accel::IoPath::Cache);
    accel::IoPathPolicy::served(file, 5000);
    policy.closed(file, 0);
    fs::passthrough::add_io_path_metrics(data.backend_metrics, policy.report());

    // A live memory mount: its backend's own series, from a real backend.
    MountView scratch;
    scratch.name = "scratch";
    scratch.mountpoint = "/srv/scratch";
    scratch.backend = "memory";
    scratch.up = true;
    scratch.backend_metrics = memory_.metrics();

    MountView broken;
    broken.name = "broken";
    broken.mountpoint = "/srv/broken";
    broken.backend = "passthrough";
    broken.io_path = "cache";
    broken.kernel_module = "on";
    broken.start_failures = 3;

    source_.mounts = {data, broken, scratch};
    source_.daemon_view.reloads_ok = 4;
    source_.daemon_view.metrics_listen_failures = 2;
    source_.daemon_view.reloads_failed = 1;
    source_.daemon_view.last_reload_ok = false;
    source_.daemon_view.last_reload_timestamp = 1700000000.5;
    source_.daemon_view.last_reload_duration_seconds = 0.25;
    source_.daemon_view.start_timestamp = 1690000000;
  }

  Exposition scrape() const { return parse_exposition(render(Collector(source_).Collect())); }

  DrivenSession session_;
  fs::memory::MemoryFs memory_{{1 << 20, 100}, fs::Policy{}};
  fuse::WorkerStats workers_[2];
  FakeSource source_;
};

TEST_F(MetricsCollector, RequestCountersMatchDrivenRequests) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "init"}}), 1);
  EXPECT_EQ(e.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "lookup"}}), 5);
  EXPECT_EQ(e.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "getattr"}}), 1);
  // Opcode slots without a name share the "unknown" series; labels stay unique.
  EXPECT_EQ(e.value("efuse_requests_total", {{"mount", "data"}, {"opcode", "unknown"}}), 2);
  // Only opcodes with requests appear.
  EXPECT_EQ(e.find("efuse_requests_total").size(), 4u);
  EXPECT_EQ(e.type["efuse_requests_total"], "counter");
}

TEST_F(MetricsCollector, ErrorsCarryErrnoNames) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_request_errors_total",
                    {{"mount", "data"}, {"opcode", "lookup"}, {"errno", "EACCES"}}),
            2);
  EXPECT_EQ(e.value("efuse_request_errors_total",
                    {{"mount", "data"}, {"opcode", "unknown"}, {"errno", "ENOSYS"}}),
            2);
  EXPECT_EQ(e.find("efuse_request_errors_total").size(), 2u) << "only nonzero errno series";
  EXPECT_TRUE(e.find("efuse_request_errors_total", {{"opcode", "getattr"}}).empty());
}

TEST_F(MetricsCollector, LatencyHistogramIsCumulativeAndCountsEveryRequest) {
  Exposition e = scrape();
  EXPECT_EQ(e.type["efuse_request_duration_seconds"], "histogram");
  for (const Sample& total : e.find("efuse_requests_total")) {
    const std::string& op = total.labels.at("opcode");
    Labels id = {{"mount", "data"}, {"opcode", op}};
    std::vector<Sample> buckets = e.find("efuse_request_duration_seconds_bucket", id);
    ASSERT_EQ(buckets.size(), fuse::kLatencyBounds.size() + 1) << op;
    double prev = 0;
    double prev_le = 0;
    for (const Sample& b : buckets) {
      double le = std::strtod(b.labels.at("le").c_str(), nullptr);
      EXPECT_GT(le, prev_le) << op << ": buckets in increasing le order";
      EXPECT_GE(b.value, prev) << op << " le=" << b.labels.at("le");
      prev = b.value;
      prev_le = le;
    }
    EXPECT_EQ(buckets.back().labels.at("le"), "+Inf");
    auto count = e.value("efuse_request_duration_seconds_count", id);
    auto sum = e.value("efuse_request_duration_seconds_sum", id);
    ASSERT_TRUE(count && sum) << op;
    EXPECT_EQ(buckets.back().value, *count) << op << ": +Inf bucket == _count";
    EXPECT_EQ(*count, total.value) << op << ": every request is timed";
    EXPECT_GE(*sum, 0) << op;
    EXPECT_LT(*sum, 10) << op << ": seconds, not nanoseconds";
  }
}

TEST_F(MetricsCollector, KernelFeaturesGrantedAndOffered) {
  Exposition e = scrape();
  auto granted = [&](const char* f) {
    return e.value("efuse_kernel_feature", {{"mount", "data"}, {"feature", f}});
  };
  auto offered = [&](const char* f) {
    return e.value("efuse_kernel_feature_offered", {{"mount", "data"}, {"feature", f}});
  };
  EXPECT_EQ(granted("passthrough"), 1);
  EXPECT_EQ(offered("passthrough"), 1);
  // Writeback cache was offered and requested, but efused drops it in favour of passthrough.
  EXPECT_EQ(granted("writeback_cache"), 0);
  EXPECT_EQ(offered("writeback_cache"), 1);
  // io_uring was offered; this session does not take it.
  EXPECT_EQ(granted("io_uring"), 0);
  EXPECT_EQ(offered("io_uring"), 1);
  EXPECT_EQ(granted("posix_locks"), 1);
  EXPECT_EQ(granted("flock_locks"), 0);
  EXPECT_EQ(offered("flock_locks"), 0);
  EXPECT_EQ(granted("max_pages"), 1);
  EXPECT_EQ(e.find("efuse_kernel_feature").size(), kKernelFeatures.size());
  EXPECT_EQ(e.find("efuse_kernel_feature_offered").size(), kKernelFeatures.size());
  EXPECT_EQ(e.value("efuse_kernel_protocol_minor", {{"mount", "data"}}), k::kMinorVersion);
  EXPECT_EQ(e.value("efuse_max_write_bytes", {{"mount", "data"}}), 128 * 1024);
}

TEST_F(MetricsCollector, SessionCounters) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_decode_errors_total", {{"mount", "data"}}), 1);
  EXPECT_EQ(e.value("efuse_passthrough_opens_total", {{"mount", "data"}}), 0);
  EXPECT_EQ(e.value("efuse_passthrough_refusals_total", {{"mount", "data"}}), 0);
  for (const char* kind : {"inode", "entry"})
    EXPECT_EQ(e.value("efuse_invalidation_failures_total", {{"mount", "data"}, {"kind", kind}}), 0)
        << kind;
}

TEST_F(MetricsCollector, BackendSeriesOfLiveMountsOnly) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_inodes", {{"mount", "data"}}), 700);
  EXPECT_EQ(e.value("efuse_inode_fds", {{"mount", "data"}}), 500);
  EXPECT_EQ(e.value("efuse_inode_fd_evictions_total", {{"mount", "data"}}), 300);
  EXPECT_EQ(e.value("efuse_inode_fd_reopens_total", {{"mount", "data"}}), 90);
  EXPECT_EQ(e.value("efuse_inode_fd_reopen_failures_total", {{"mount", "data"}}), 2);
  EXPECT_EQ(e.value("efuse_listing_cache_drops_total", {{"mount", "data"}}), 4);
  EXPECT_EQ(e.value("efuse_shared_opens_total", {{"mount", "data"}}), 5);
  EXPECT_EQ(e.value("efuse_watched_directories", {{"mount", "data"}}), 60);
  EXPECT_EQ(e.value("efuse_watch_fanotify_directories", {{"mount", "data"}}), 58);
  EXPECT_EQ(e.value("efuse_watch_muted_files", {{"mount", "data"}}), 6);
  EXPECT_EQ(e.type["efuse_watch_muted_files"], "gauge");
  EXPECT_EQ(e.value("efuse_watch_events_total", {{"mount", "data"}}), 1000);
  EXPECT_EQ(e.value("efuse_watch_invalidations_total", {{"mount", "data"}}), 70);
  EXPECT_EQ(e.value("efuse_watch_overflows_total", {{"mount", "data"}}), 1);
  EXPECT_EQ(e.value("efuse_watch_failures_total", {{"mount", "data"}}), 3);
  EXPECT_EQ(e.type["efuse_inode_fds"], "gauge");
  EXPECT_EQ(e.type["efuse_watched_directories"], "gauge");
  EXPECT_EQ(e.type["efuse_watch_events_total"], "counter");
  EXPECT_TRUE(e.find("efuse_inodes", {{"mount", "broken"}}).empty()) << "not live: no table";
  EXPECT_TRUE(e.find("efuse_watched_directories", {{"mount", "broken"}}).empty());
}

TEST_F(MetricsCollector, IoPathSeries) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_io_path_decisions_total",
                    {{"mount", "data"}, {"decision", "cache"}, {"reason", "guess"}}), 1);
  EXPECT_TRUE(e.find("efuse_io_path_decisions_total", {{"mount", "data"}, {"decision", "passthrough"}})
                  .empty()) << "no series for decisions never made";
  EXPECT_EQ(e.value("efuse_io_path_epochs_measured_total", {{"mount", "data"}}), 1);
  EXPECT_EQ(e.value("efuse_io_path_probes_total",
                    {{"mount", "data"}, {"class", "small_cold_read"}, {"cause", "start"}}), 1);
  // The probe is not complete (passthrough not measured yet): no prediction, no choice.
  EXPECT_TRUE(e.find("efuse_io_path_predicted_cost_seconds", {{"mount", "data"}}).empty());
  EXPECT_EQ(e.value("efuse_io_path_choice",
                    {{"mount", "data"}, {"class", "small_cold_read"}, {"path", "cache"}}), 0);
  EXPECT_EQ(e.value("efuse_io_path_choice",
                    {{"mount", "data"}, {"class", "small_cold_read"}, {"path", "passthrough"}}), 0);
  EXPECT_EQ(e.type["efuse_io_path_choice"], "gauge");
  EXPECT_EQ(e.type["efuse_io_path_decisions_total"], "counter");
  EXPECT_TRUE(e.find("efuse_io_path_decisions_total", {{"mount", "broken"}}).empty());
}

// Each backend exports its own series under the mount label: the memory backend its pool
// and inode limits, and no passthrough series.
TEST_F(MetricsCollector, EachBackendExportsItsOwnSeries) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_memory_bytes_limit", {{"mount", "scratch"}}), 1 << 20);
  EXPECT_EQ(e.value("efuse_memory_bytes", {{"mount", "scratch"}}), 0);
  EXPECT_EQ(e.value("efuse_memory_inodes", {{"mount", "scratch"}}), 1);
  EXPECT_EQ(e.value("efuse_memory_inodes_limit", {{"mount", "scratch"}}), 100);
  EXPECT_EQ(e.value("efuse_memory_enospc_total", {{"mount", "scratch"}}), 0);
  EXPECT_EQ(e.type["efuse_memory_enospc_total"], "counter");
  EXPECT_EQ(e.value("efuse_inodes", {{"mount", "scratch"}}), 1);  // the root
  EXPECT_EQ(e.value("efuse_forget_excess_total", {{"mount", "data"}}), 0);
  EXPECT_TRUE(e.find("efuse_inode_fds", {{"mount", "scratch"}}).empty());
  EXPECT_TRUE(e.find("efuse_memory_bytes", {{"mount", "data"}}).empty());
  EXPECT_EQ(e.value("efuse_inode_fd_eviction_passes_total", {{"mount", "data"}, {"by", "evictor"}}), 0);
}

TEST_F(MetricsCollector, WorkerSeries) {
  Exposition e = scrape();
  Labels w0 = {{"mount", "data"}, {"worker", "classic-0"}};
  Labels w1 = {{"mount", "data"}, {"worker", "classic-1"}};
  EXPECT_EQ(e.value("efuse_worker_requests_total", w0), 5);
  EXPECT_EQ(e.value("efuse_worker_requests_total", w1), 4);
  EXPECT_EQ(e.value("efuse_worker_in_flight", w0), 0);
  EXPECT_EQ(e.value("efuse_worker_in_flight", w1), 1);
  EXPECT_DOUBLE_EQ(*e.value("efuse_worker_wait_seconds_total", w0), 2.0);
  EXPECT_DOUBLE_EQ(*e.value("efuse_worker_busy_seconds_total", w0), 1.5);
  EXPECT_EQ(e.find("efuse_worker_requests_total").size(), 2u);
}

TEST_F(MetricsCollector, KernelModuleTierSeries) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_kernel_answered_total", {{"mount", "data"}, {"opcode", "getattr"}}), 40);
  EXPECT_EQ(e.value("efuse_kernel_answered_total", {{"mount", "data"}, {"opcode", "lookup"}}), 12);
  // An opcode that reached the handlers but was never answered has its 0.
  EXPECT_EQ(e.value("efuse_kernel_answered_total", {{"mount", "data"}, {"opcode", "read"}}), 0);
  EXPECT_EQ(e.value("efuse_kernel_handler_fallbacks_total",
                    {{"mount", "data"}, {"opcode", "getattr"}, {"reason", "declined"}}), 7);
  EXPECT_EQ(e.value("efuse_kernel_handler_fallbacks_total",
                    {{"mount", "data"}, {"opcode", "lookup"}, {"reason", "bad_reply"}}), 1);
  EXPECT_EQ(e.find("efuse_kernel_handler_fallbacks_total").size(), 3u) << "zero reasons omitted";
  EXPECT_EQ(e.value("efuse_kernel_map_entries", {{"mount", "data"}, {"map", "getattr"}}), 3);
  EXPECT_EQ(e.value("efuse_kernel_map_entries", {{"mount", "data"}, {"map", "lookup"}}), 2);
  EXPECT_EQ(e.value("efuse_kernel_map_bytes", {{"mount", "data"}, {"map", "getattr"}}),
            3 * (8 + sizeof(efuse_handler_entry)));
  EXPECT_EQ(e.value("efuse_kernel_map_bytes", {{"mount", "data"}, {"map", "lookup"}}),
            2 * (sizeof(efuse_handler_name_key) + sizeof(efuse_handler_entry)));
  EXPECT_EQ(e.value("efuse_kernel_map_stores_skipped_total", {{"mount", "data"}}), 5);
  EXPECT_EQ(e.value("efuse_kernel_map_drops_total", {{"mount", "data"}}), 6);
  EXPECT_EQ(e.type["efuse_kernel_answered_total"], "counter");
  EXPECT_EQ(e.type["efuse_kernel_map_entries"], "gauge");
  EXPECT_TRUE(e.find("efuse_kernel_answered_total", {{"mount", "broken"}}).empty());
  EXPECT_TRUE(e.find("efuse_kernel_map_entries", {{"mount", "broken"}}).empty());
}

TEST_F(MetricsCollector, HandlerSeries) {
  Exposition e = scrape();
  Labels lookup = {{"mount", "data"}, {"opcode", "lookup"}};
  Labels getattr = {{"mount", "data"}, {"opcode", "getattr"}};
  EXPECT_EQ(e.value("efuse_handler_info",
                    {{"mount", "data"}, {"opcode", "lookup"}, {"prog_id", "42"},
                     {"tag", "0123456789abcdef"}, {"abi", "2"},
                     {"path", "/usr/lib/efuse/handlers/efuse_lookup.bpf.o"}}), 1);
  EXPECT_EQ(e.find("efuse_handler_info").size(), 1u) << "a removed handler has no info series";
  EXPECT_DOUBLE_EQ(*e.value("efuse_handler_loaded_timestamp_seconds", lookup), 1700000000.5);
  EXPECT_TRUE(e.find("efuse_handler_loaded_timestamp_seconds", getattr).empty());
  EXPECT_EQ(e.value("efuse_handler_swaps_total", lookup), 3);
  EXPECT_EQ(e.value("efuse_handler_swap_failures_total", lookup), 1);
  EXPECT_EQ(e.value("efuse_handler_swaps_total", getattr), 1);
  EXPECT_EQ(e.value("efuse_handler_removals_total", getattr), 1);
  EXPECT_EQ(e.value("efuse_handler_runs_total", lookup), 1000);
  EXPECT_DOUBLE_EQ(*e.value("efuse_handler_run_seconds_total", lookup), 2.5);
  EXPECT_EQ(e.type["efuse_handler_info"], "gauge");
  EXPECT_EQ(e.type["efuse_handler_swaps_total"], "counter");
  EXPECT_EQ(e.type["efuse_handler_run_seconds_total"], "counter");
  EXPECT_TRUE(e.find("efuse_handler_swaps_total", {{"mount", "broken"}}).empty());
}

TEST_F(MetricsCollector, MountStateForLiveAndFailedMounts) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_mount_up", {{"mount", "data"}, {"backend", "passthrough"}}), 1);
  EXPECT_EQ(e.value("efuse_mount_up", {{"mount", "broken"}, {"backend", "passthrough"}}), 0);
  EXPECT_EQ(e.value("efuse_mount_start_failures_total", {{"mount", "data"}}), 1);
  EXPECT_EQ(e.value("efuse_mount_start_failures_total", {{"mount", "broken"}}), 3);
  EXPECT_EQ(e.value("efuse_mount_info", {{"mount", "data"},
                                         {"mountpoint", "/srv/data"},
                                         {"backend", "passthrough"},
                                         {"transport", "classic"},
                                         {"io_path", "passthrough"},
                                         {"io_path_effective", "cache"},
                                         {"kernel_module", "auto"},
                                         {"tier", "module"}}),
            1);
  EXPECT_EQ(e.find("efuse_mount_info", {{"mount", "broken"}}).size(), 1u);
  EXPECT_EQ(e.value("efuse_mount_info", {{"mount", "broken"},
                                         {"mountpoint", "/srv/broken"},
                                         {"backend", "passthrough"},
                                         {"transport", ""},
                                         {"io_path", "cache"},
                                         {"io_path_effective", ""},
                                         {"kernel_module", "on"},
                                         {"tier", ""}}),
            1);
  // A mount without a session has no request, kernel or worker series.
  for (const char* name : {"efuse_requests_total", "efuse_kernel_feature",
                           "efuse_kernel_protocol_minor", "efuse_worker_requests_total",
                           "efuse_decode_errors_total"}) {
    EXPECT_TRUE(e.find(name, {{"mount", "broken"}}).empty()) << name;
  }
}

TEST_F(MetricsCollector, SessionBeforeInitHasNoKernelSeries) {
  DrivenSession fresh;
  MountView m;
  m.name = "fresh";
  m.backend = "passthrough";
  m.up = true;
  m.session = &fresh.session();
  source_.mounts = {m};
  Exposition e = scrape();
  EXPECT_TRUE(e.find("efuse_kernel_feature").empty());
  EXPECT_TRUE(e.find("efuse_max_write_bytes").empty());
  EXPECT_EQ(e.value("efuse_decode_errors_total", {{"mount", "fresh"}}), 0);
}

TEST_F(MetricsCollector, DaemonFamilies) {
  Exposition e = scrape();
  EXPECT_EQ(e.value("efuse_config_reloads_total", {{"result", "success"}}), 4);
  EXPECT_EQ(e.value("efuse_config_reloads_total", {{"result", "failure"}}), 1);
  EXPECT_EQ(e.value("efuse_metrics_listen_failures_total", {}), 2);
  EXPECT_EQ(e.value("efuse_config_last_reload_success"), 0);
  EXPECT_DOUBLE_EQ(*e.value("efuse_config_last_reload_timestamp_seconds"), 1700000000.5);
  EXPECT_DOUBLE_EQ(*e.value("efuse_config_last_reload_duration_seconds"), 0.25);
  EXPECT_EQ(e.value("efuse_build_info", {{"version", EFUSE_VERSION}}), 1);
  EXPECT_EQ(e.value("efuse_start_time_seconds"), 1690000000);
}

TEST_F(MetricsCollector, ProcessFamilies) {
  Exposition e = scrape();
  auto rss = e.value("efuse_process_resident_memory_bytes");
  auto fds = e.value("efuse_process_open_fds");
  auto threads = e.value("efuse_process_threads");
  auto cpu = e.value("efuse_process_cpu_seconds_total");
  ASSERT_TRUE(rss && fds && threads && cpu);
  EXPECT_GT(*rss, 1024 * 1024);
  EXPECT_GE(*fds, 3);  // stdin, stdout, stderr at least
  EXPECT_GE(*threads, 1);
  EXPECT_GE(*cpu, 0);
  EXPECT_EQ(e.type["efuse_process_cpu_seconds_total"], "counter");
}

TEST_F(MetricsCollector, EveryFamilyIsNamedTypedAndDocumented) {
  std::set<std::string> names;
  for (const prometheus::MetricFamily& f : Collector(source_).Collect()) {
    EXPECT_EQ(f.name.rfind("efuse_", 0), 0u) << f.name;
    EXPECT_GT(f.help.size(), 10u) << f.name;
    EXPECT_FALSE(f.metric.empty()) << f.name << ": empty families are left out";
    EXPECT_TRUE(names.insert(f.name).second) << f.name << " twice";
    bool total = f.name.size() > 6 && f.name.substr(f.name.size() - 6) == "_total";
    EXPECT_EQ(total, f.type == prometheus::MetricType::Counter) << f.name;
    std::set<std::vector<prometheus::ClientMetric::Label>> series;
    for (const auto& m : f.metric)
      EXPECT_TRUE(series.insert(m.label).second) << f.name << ": duplicate label set";
  }
  for (const char* required :
       {"efuse_requests_total", "efuse_request_errors_total", "efuse_request_duration_seconds",
        "efuse_worker_requests_total", "efuse_worker_in_flight",
        "efuse_worker_wait_seconds_total", "efuse_worker_busy_seconds_total", "efuse_mount_up",
        "efuse_mount_start_failures_total", "efuse_mount_info", "efuse_kernel_feature",
        "efuse_kernel_feature_offered", "efuse_kernel_protocol_minor", "efuse_max_write_bytes",
        "efuse_decode_errors_total", "efuse_invalidation_failures_total",
        "efuse_passthrough_opens_total", "efuse_kernel_open_holds",
        "efuse_passthrough_refusals_total", "efuse_inodes", "efuse_inode_fds",
        "efuse_inode_fd_evictions_total", "efuse_inode_fd_reopens_total",
        "efuse_inode_fd_reopen_failures_total", "efuse_listing_cache_drops_total",
        "efuse_shared_opens_total", "efuse_watched_directories",
        "efuse_watch_fanotify_directories", "efuse_watch_muted_files", "efuse_watch_events_total",
        "efuse_watch_invalidations_total", "efuse_watch_overflows_total",
        "efuse_watch_failures_total", "efuse_forget_excess_total", "efuse_memory_bytes",
        "efuse_memory_bytes_limit", "efuse_memory_inodes", "efuse_memory_inodes_limit",
        "efuse_memory_enospc_total", "efuse_io_path_decisions_total",
        "efuse_io_path_probes_total", "efuse_io_path_choice",
        "efuse_io_path_epochs_measured_total", "efuse_config_reloads_total",
        "efuse_config_last_reload_success", "efuse_config_last_reload_timestamp_seconds",
        "efuse_config_last_reload_duration_seconds", "efuse_build_info",
        "efuse_start_time_seconds", "efuse_process_resident_memory_bytes",
        "efuse_process_open_fds", "efuse_process_threads", "efuse_process_cpu_seconds_total",
        "efuse_scrape_errors_total"}) {
    EXPECT_EQ(names.count(required), 1u) << required;
  }
}

class ThrowingSource final : public MetricsSource {
 public:
  void visit_mounts(const std::function<void(const MountView&)>&) const override {
    throw std::runtime_error("supervisor is shutting down");
  }
  DaemonView daemon() const override { return {}; }
};

TEST(MetricsCollectorFailure, ThrowingSourceIsCountedNotPropagated) {
  ThrowingSource source;
  Collector collector(source);
  std::vector<prometheus::MetricFamily> families;
  ASSERT_NO_THROW(families = collector.Collect());
  ASSERT_NO_THROW(families = collector.Collect());
  Exposition e = parse_exposition(render(families));
  EXPECT_EQ(e.value("efuse_scrape_errors_total"), 2);
  EXPECT_TRUE(e.value("efuse_build_info", {{"version", EFUSE_VERSION}}).has_value())
      << "families built before the failure are still served";
}

TEST_F(MetricsCollector, ScrapesWhileRequestsRunStayConsistent) {
  std::atomic<bool> stop{false};
  std::thread driver([&] {
    while (!stop.load()) session_.getattr();
  });
  for (int i = 0; i < 50; ++i) {
    Exposition e = scrape();
    for (const Sample& c : e.find("efuse_request_duration_seconds_count")) {
      Labels id = c.labels;
      id["le"] = "+Inf";
      EXPECT_EQ(e.value("efuse_request_duration_seconds_bucket", id), c.value);
    }
  }
  stop = true;
  driver.join();
}

// ---- pieces ------------------------------------------------------------------------------

TEST(MetricsHistogram, CumulativeBucketsFromRecordedLatencies) {
  fuse::OpcodeStats op;
  op.record(1'000, 0);              // 1 us: first bucket (<= 5 us)
  op.record(7'000, 0);              // 7 us: second bucket (<= 10 us)
  op.record(20'000'000'000, EIO);   // 20 s: only +Inf
  OpcodeSnapshot snap;
  snap.add(op);
  auto h = latency_histogram(snap);
  ASSERT_EQ(h.bucket.size(), fuse::kLatencyBounds.size() + 1);
  EXPECT_EQ(h.bucket[0].cumulative_count, 1u);
  EXPECT_DOUBLE_EQ(h.bucket[0].upper_bound, 5e-6);
  EXPECT_EQ(h.bucket[1].cumulative_count, 2u);
  EXPECT_EQ(h.bucket[fuse::kLatencyBounds.size() - 1].cumulative_count, 2u);
  EXPECT_TRUE(std::isinf(h.bucket.back().upper_bound));
  EXPECT_EQ(h.bucket.back().cumulative_count, 3u);
  EXPECT_EQ(h.sample_count, 3u);
  EXPECT_NEAR(h.sample_sum, 20.000008, 1e-9);
  EXPECT_EQ(snap.errors_by_errno[EIO], 1u);
}

TEST(MetricsHistogram, UnnamedOpcodeSlotsMergeIntoUnknown) {
  fuse::SessionStats stats{};
  stats[0].record(1'000, ENOSYS);
  stats[kUnassignedOpcode].record(1'000, ENOSYS);
  stats[code(k::Opcode::Read)].record(1'000, 0);
  auto snaps = snapshot_opcodes(stats);
  ASSERT_EQ(snaps.size(), 2u);
  EXPECT_EQ(snaps.at("unknown").requests, 2u);
  EXPECT_EQ(snaps.at("unknown").errors_by_errno[ENOSYS], 2u);
  EXPECT_EQ(snaps.at("read").requests, 1u);
}

TEST(MetricsErrnoLabel, NamesAndFolding) {
  EXPECT_EQ(errno_label(ENOENT), "ENOENT");
  EXPECT_EQ(errno_label(EACCES), "EACCES");
  EXPECT_EQ(errno_label(ENOSYS), "ENOSYS");
  EXPECT_EQ(errno_label(fuse::kMaxErrno), "other");
  EXPECT_EQ(errno_label(0), "other");
  std::set<std::string> labels;
  for (int slot = 0; slot <= fuse::kMaxErrno; ++slot) labels.insert(errno_label(slot));
  EXPECT_LE(labels.size(), static_cast<size_t>(fuse::kMaxErrno) + 1);
}

TEST(MetricsProcess, ParsesProcFiles) {
  std::string status = "Name:\tefused\nThreads:\t7\nVmRSS:\t    2048 kB\nVmSwap:\t0 kB\n";
  EXPECT_EQ(parse_status_rss_bytes(status), 2048.0 * 1024);
  EXPECT_EQ(parse_status_threads(status), 7);
  EXPECT_FALSE(parse_status_rss_bytes("Name:\tkthread\n").has_value());
  // The command name may hold spaces and parentheses; utime = 250, stime = 50 ticks.
  std::string stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3";
  EXPECT_DOUBLE_EQ(*parse_stat_cpu_seconds(stat, 100), 3.0);
  EXPECT_FALSE(parse_stat_cpu_seconds("1234 (short) S 1", 100).has_value());
  EXPECT_FALSE(parse_stat_cpu_seconds(stat, 0).has_value());
}

}  // namespace
}  // namespace efuse::telemetry::testing

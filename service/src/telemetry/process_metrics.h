// The daemon's own process: memory, file descriptors, threads, CPU time. Read from /proc at
// scrape time; a value that cannot be read is left out rather than reported as 0.
#pragma once

#include <prometheus/metric_family.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace efuse::telemetry {

struct ProcessStats {
  std::optional<double> resident_memory_bytes;  // /proc/self/status VmRSS
  std::optional<double> threads;                // /proc/self/status Threads
  std::optional<double> cpu_seconds;            // /proc/self/stat utime + stime
  std::optional<double> open_fds;               // entries of /proc/self/fd
  std::optional<double> max_fds;                // RLIMIT_NOFILE soft limit
};

ProcessStats read_process_stats();

// Parsers, separate from the file reads so tests can feed them text.
// `status` is /proc/self/status; the VmRSS line is in kB.
std::optional<double> parse_status_rss_bytes(std::string_view status);
std::optional<double> parse_status_threads(std::string_view status);
// `stat` is /proc/self/stat; `ticks_per_second` is sysconf(_SC_CLK_TCK).
std::optional<double> parse_stat_cpu_seconds(std::string_view stat, long ticks_per_second);

void append_process_families(const ProcessStats& stats, std::vector<prometheus::MetricFamily>& out);

}  // namespace efuse::telemetry

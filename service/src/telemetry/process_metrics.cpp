#include "telemetry/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <iterator>
#include <sstream>

#include "telemetry/family.h"

namespace efuse::telemetry {
namespace {

using prometheus::MetricType;

// Fields 14 and 15 of /proc/PID/stat (1-based): utime, stime in clock ticks.
constexpr int kUtimeField = 14;

std::optional<std::string> read_file(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::optional<double> parse_number(std::string_view text) {
  size_t begin = text.find_first_not_of(" \t");
  if (begin == std::string_view::npos) return std::nullopt;
  text.remove_prefix(begin);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end == text.data()) return std::nullopt;
  return static_cast<double>(v);
}

// The value after "Key:" on its own line of /proc/self/status.
std::optional<double> status_field(std::string_view status, std::string_view key) {
  size_t pos = 0;
  while (pos < status.size()) {
    size_t eol = status.find('\n', pos);
    std::string_view line = status.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    if (line.size() > key.size() && line.substr(0, key.size()) == key &&
        line[key.size()] == ':') {
      return parse_number(line.substr(key.size() + 1));
    }
    if (eol == std::string_view::npos) break;
    pos = eol + 1;
  }
  return std::nullopt;
}

std::optional<double> count_open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  double n = 0;
  while (const struct dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor opendir() itself holds
}

std::optional<double> soft_fd_limit() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return std::nullopt;
  return static_cast<double>(rl.rlim_cur);
}

void add_optional(std::vector<prometheus::MetricFamily>& out, const char* name,
                  const char* help, MetricType type, const std::optional<double>& value) {
  if (!value) return;
  prometheus::MetricFamily f = make_family(name, help, type);
  if (type == MetricType::Counter) {
    add_counter(f, {}, *value);
  } else {
    add_gauge(f, {}, *value);
  }
  out.push_back(std::move(f));
}

}  // namespace

std::optional<double> parse_status_rss_bytes(std::string_view status) {
  auto kb = status_field(status, "VmRSS");
  if (!kb) return std::nullopt;
  return *kb * 1024;
}

std::optional<double> parse_status_threads(std::string_view status) {
  return status_field(status, "Threads");
}

std::optional<double> parse_stat_cpu_seconds(std::string_view stat, long ticks_per_second) {
  // The command name (field 2) is in parentheses and may hold spaces and ')'; fields are
  // counted from after its last ')'.
  size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos || ticks_per_second <= 0) return std::nullopt;
  std::istringstream rest{std::string(stat.substr(paren + 1))};
  std::string field;
  for (int i = 3; i < kUtimeField; ++i) {
    if (!(rest >> field)) return std::nullopt;
  }
  std::string utime, stime;
  if (!(rest >> utime >> stime)) return std::nullopt;
  auto u = parse_number(utime);
  auto s = parse_number(stime);
  if (!u || !s) return std::nullopt;
  return (*u + *s) / static_cast<double>(ticks_per_second);
}

ProcessStats read_process_stats() {
  ProcessStats p;
  if (auto status = read_file("/proc/self/status")) {
    p.resident_memory_bytes = parse_status_rss_bytes(*status);
    p.threads = parse_status_threads(*status);
  }
  if (auto stat = read_file("/proc/self/stat"))
    p.cpu_seconds = parse_stat_cpu_seconds(*stat, sysconf(_SC_CLK_TCK));
  p.open_fds = count_open_fds();
  p.max_fds = soft_fd_limit();
  return p;
}

void append_process_families(const ProcessStats& stats,
                             std::vector<prometheus::MetricFamily>& out) {
  add_optional(out, "efuse_process_resident_memory_bytes",
               "Resident set size of the efused process.", MetricType::Gauge,
               stats.resident_memory_bytes);
  add_optional(out, "efuse_process_open_fds", "File descriptors the efused process has open.",
               MetricType::Gauge, stats.open_fds);
  add_optional(out, "efuse_process_max_fds",
               "Soft limit on open file descriptors (RLIMIT_NOFILE) of the efused process.",
               MetricType::Gauge, stats.max_fds);
  add_optional(out, "efuse_process_threads", "Threads in the efused process.",
               MetricType::Gauge, stats.threads);
  add_optional(out, "efuse_process_cpu_seconds_total",
               "User and system CPU time the efused process has used.", MetricType::Counter,
               stats.cpu_seconds);
}

}  // namespace efuse::telemetry

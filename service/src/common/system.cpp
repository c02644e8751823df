#include "common/system.h"

#include <sys/sysinfo.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>

namespace efuse {

std::optional<std::vector<unsigned>> parse_cpu_list(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  std::vector<unsigned> cpus;
  if (text.empty()) return cpus;
  auto number = [](std::string_view s, unsigned* out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    if (comma != std::string_view::npos && text.empty()) return std::nullopt;  // "0,"
    size_t dash = item.find('-');
    unsigned lo = 0, hi = 0;
    if (dash == std::string_view::npos) {
      if (!number(item, &lo)) return std::nullopt;
      hi = lo;
    } else if (!number(item.substr(0, dash), &lo) || !number(item.substr(dash + 1), &hi) ||
               hi < lo || hi - lo > 65535) {
      return std::nullopt;
    }
    for (unsigned c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

unsigned possible_cpus() {
  std::ifstream f("/sys/devices/system/cpu/possible");
  std::string line;
  if (f && std::getline(f, line)) {
    auto cpus = parse_cpu_list(line);
    if (cpus && !cpus->empty()) return static_cast<unsigned>(cpus->size());
  }
  int n = get_nprocs_conf();
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

bool seccomp_filtered() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Seccomp:", 0) != 0) continue;
    unsigned mode = 0;
    size_t at = line.find_first_not_of(" \t", 8);
    if (at == std::string::npos) return false;
    auto [p, ec] = std::from_chars(line.data() + at, line.data() + line.size(), mode);
    return ec == std::errc() && mode == 2;  // SECCOMP_MODE_FILTER
  }
  return false;
}

std::string errno_text(int err) {
  std::string s = strerror(err);
  if (const char* name = strerrorname_np(err)) s += std::string(" (") + name + ")";
  return s;
}

}  // namespace efuse

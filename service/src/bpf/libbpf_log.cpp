#include "bpf/libbpf_log.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>

#include "common/log.h"

namespace efuse::bpf {
namespace {

std::mutex g_mu;
std::string g_first_warning;

// Called from C (libbpf): must not throw.
int print(enum libbpf_print_level level, const char* fmt, va_list ap) noexcept {
  char buf[512];
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  if (n <= 0) return 0;
  std::string_view line(buf, static_cast<size_t>(n) < sizeof buf ? static_cast<size_t>(n)
                                                                  : sizeof buf - 1);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.remove_suffix(1);
  if (line.empty()) return 0;
  LOG_DEBUG("bpf: %.*s", static_cast<int>(line.size()), line.data());
  if (level == LIBBPF_WARN) {
    try {
      std::lock_guard<std::mutex> lock(g_mu);
      // The RLIMIT_MEMLOCK notice is advisory (kernels >= 5.11 account BPF memory to the
      // cgroup): the warning worth reporting is the one that says what failed.
      if (g_first_warning.empty() && line.find("RLIMIT_MEMLOCK") == std::string_view::npos) {
        std::string_view first = line.substr(0, line.find('\n'));
        if (first.rfind("libbpf: ", 0) == 0) first.remove_prefix(8);
        g_first_warning.assign(first);
      }
    } catch (...) {
      // Out of memory: losing the reason is better than unwinding into libbpf.
    }
  }
  return 0;
}

}  // namespace

void route_libbpf_log() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(print); });
}

std::string take_first_libbpf_warning() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::string out;
  out.swap(g_first_warning);
  return out;
}

}  // namespace efuse::bpf

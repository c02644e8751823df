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
  // libbpf blames RLIMIT_MEMLOCK whenever bpf() is refused ("Failed to bump RLIMIT_MEMLOCK",
  // "... and/or that RLIMIT_MEMLOCK is set to big enough value"): it falls back to that
  // advice when its probe for memory-cgroup accounting is refused as well. On the kernels
  // efused loads on (FUSE tracepoints, Linux >= 6.12) BPF memory is charged to the memory
  // cgroup, so the limit is never the cause: say so next to the line, for whoever reads the
  // debug log (the telemetry line at the default level says what happened instead).
  bool memlock = line.find("RLIMIT_MEMLOCK") != std::string_view::npos;
  LOG_DEBUG("bpf: %.*s%s", static_cast<int>(line.size()), line.data(),
            memlock ? " [efused: not the cause on this kernel, which charges BPF memory to the "
                      "memory cgroup; the kernel refused bpf() itself, see the telemetry line]"
                    : "");
  if (level == LIBBPF_WARN) {
    try {
      std::lock_guard<std::mutex> lock(g_mu);
      // The warning worth reporting is the one that says what failed, not the memlock advice.
      if (g_first_warning.empty() && !memlock) {
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

// The one clock of efused's ages, latencies and timeouts.
#pragma once

#include <time.h>

#include <cstdint>

namespace efuse {

// CLOCK_MONOTONIC in nanoseconds: what std::chrono::steady_clock reads on Linux, what the
// channels stamp requests with (fs::Context::now_ns) and what the eBPF side's
// bpf_ktime_get_ns() reads, so times from all of them can be subtracted from each other.
inline uint64_t monotonic_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// The same clock, signed: for ages and differences that may come out negative.
inline int64_t steady_ns() { return static_cast<int64_t>(monotonic_ns()); }

}  // namespace efuse

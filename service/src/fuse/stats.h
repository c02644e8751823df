// Counters the session and channels keep on the request path, read at scrape time by the
// telemetry layer. Lock-free (relaxed atomics); cumulative.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <ctime>

#include "common/clock.h"
#include "fuse/kernel.h"

namespace fuse {

// Upper bounds (seconds) of the daemon processing latency histogram; +Inf is implied.
inline constexpr std::array<double, 20> kLatencyBounds = {
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 1e-1, 2.5e-1, 5e-1, 1.0, 2.5, 5.0, 10.0};
inline constexpr int kMaxErrno = 134;  // errnos above are folded into the last slot

struct OpcodeStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> latency_sum_ns{0};
  std::array<std::atomic<uint64_t>, kLatencyBounds.size() + 1> latency_buckets{};  // non-cumulative
  std::array<std::atomic<uint64_t>, kMaxErrno + 1> errors_by_errno{};

  void record(uint64_t ns, int err) {
    requests.fetch_add(1, std::memory_order_relaxed);
    latency_sum_ns.fetch_add(ns, std::memory_order_relaxed);
    double s = static_cast<double>(ns) * 1e-9;
    size_t i = 0;
    while (i < kLatencyBounds.size() && s > kLatencyBounds[i]) ++i;
    latency_buckets[i].fetch_add(1, std::memory_order_relaxed);
    if (err != 0) {
      errors.fetch_add(1, std::memory_order_relaxed);
      errors_by_errno[err > 0 && err < kMaxErrno ? err : kMaxErrno].fetch_add(
          1, std::memory_order_relaxed);
    }
  }
};

// Indexed by opcode; slot 0 counts requests with opcodes efused does not know.
using SessionStats = std::array<OpcodeStats, kernel::kMaxOpcode + 1>;

// One per worker thread (classic) or queue (io_uring).
struct WorkerStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint32_t> in_flight{0};     // 1 while the worker handles a request
  std::atomic<uint64_t> wait_ns{0};       // time spent waiting for the next request
  std::atomic<uint64_t> busy_ns{0};       // time spent handling requests
  // io_uring queues: the thread's scheduling class (1 SCHED_IDLE, 0 SCHED_BATCH; -1 a
  // /dev/fuse worker), and how often the starvation guard found it starved and made it
  // SCHED_BATCH (accel/queue_class.h).
  std::atomic<int> sched_class{-1};
  std::atomic<uint64_t> starved{0};
};

// The /dev/fuse worker count of a channel (accel/workers.h): what runs now, the limits,
// and how often it changed (cumulative).
struct WorkerCount {
  unsigned running = 0;
  unsigned min = 0;
  unsigned max = 0;
  uint64_t grown = 0;    // workers started beyond the first `min`, or again
  uint64_t retired = 0;  // workers that left (idle, or above a lowered maximum)
};

using efuse::monotonic_ns;

}  // namespace fuse

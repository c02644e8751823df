// How many /dev/fuse workers the classic channel runs, between a minimum (mounts.yaml
// `threads`, started with the mount) and a maximum (`max_threads`), from how many are busy
// (docs/adaptive-io.md, "Worker count"):
//
//   grow:   a worker takes a request and every worker is busy (this one included): start
//           one more, so that the next request does not wait behind the ones being served
//           (a blocking request served inline, a burst);
//   shrink: a worker finished a request, and for a whole window (kWindow) at least two
//           workers were idle at every moment a request was taken: this one leaves (one per
//           window, so the count falls gradually); a worker above a lowered maximum leaves
//           at once.
//
// Pure logic: callers pass the counts and the time (any monotonic clock, in ns), so tests
// drive it with simulated load. Thread-safe and lock-free (it sits on the request path).
#pragma once

#include <atomic>
#include <cstdint>

namespace efuse::accel {

class WorkerCountPolicy {
 public:
  static constexpr int64_t kWindow = 10'000'000'000;  // 10 s
  // Defaults of mounts.yaml `max_threads` when it is not set: max(threads, kDefaultMax).
  static constexpr unsigned kDefaultMax = 16;

  WorkerCountPolicy(unsigned lo, unsigned hi, int64_t window_ns = kWindow)
      : min_(lo), max_(hi < lo ? lo : hi), window_(window_ns) {}

  // Live (config reload); max below min is taken as min.
  void set_limits(unsigned lo, unsigned hi) {
    min_.store(lo);
    max_.store(hi < lo ? lo : hi);
  }
  unsigned min() const { return min_.load(std::memory_order_relaxed); }
  unsigned max() const { return max_.load(std::memory_order_relaxed); }

  // A worker took a request; `busy` counts the workers handling one now, this one included,
  // of `workers` running. True: start one more worker.
  bool took(unsigned busy, unsigned workers, int64_t now_ns) {
    if (busy + 1 >= workers) crowded_at_.store(now_ns, std::memory_order_relaxed);
    return busy >= workers && workers < max();
  }

  // A worker finished its request, of `workers` running. True: it should leave (the caller
  // then runs one fewer).
  bool finished(unsigned workers, int64_t now_ns) {
    if (workers > max() && workers > min()) return true;
    if (workers <= min()) return false;
    int64_t at = crowded_at_.load(std::memory_order_relaxed);
    if (now_ns - at < window_) return false;
    // One leaves per window: the first to claim it.
    return crowded_at_.compare_exchange_strong(at, now_ns, std::memory_order_relaxed);
  }

  // A worker started (grown or the first ones): the window starts again from now.
  void started(int64_t now_ns) { crowded_at_.store(now_ns, std::memory_order_relaxed); }

 private:
  std::atomic<unsigned> min_;
  std::atomic<unsigned> max_;
  int64_t window_;
  std::atomic<int64_t> crowded_at_{0};
};

}  // namespace efuse::accel

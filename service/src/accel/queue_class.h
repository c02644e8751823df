// The scheduling class of a FUSE-over-io_uring queue thread (docs/adaptive-io.md, "Queue
// threads: SCHED_IDLE with a starvation guard").
//
// The kernel queues a request on the ring of the CPU its sender runs on, and each ring's
// thread is pinned there. When that thread answers, it wakes the waiting sender on its own,
// busy, CPU; the scheduler then moves the sender to an idle CPU, and its next request wakes
// the other ring's thread there: every round trip migrates the client and costs a cross-CPU
// wakeup. A SCHED_IDLE thread does not count as load when a wakeup looks for a CPU, and is
// preempted by the task it wakes: the sender stays where it is, and a round trip is two
// context switches on one CPU (tar of the kernel subset 1.34x faster, 45,000-64,000 client
// migrations down to ~150, bench/results/2026-12-07-*-idle-queues).
//
// SCHED_IDLE also means: any other runnable task on that CPU goes first. Beside a busy loop
// on the same CPU an idle-class thread waits a scheduler tick (~4 ms here) for every
// request, where a SCHED_BATCH one waits ~15 us. A guard therefore looks at each
// idle-class thread every few milliseconds (its schedstat: time it waited for a CPU, times
// it ran), and finds it contended when
//   - its mean wait for the CPU per run over the interval reached wait_limit (a client's
//     own work between two requests is tens of microseconds; a competing task's slice is
//     milliseconds), or
//   - it was runnable inside the same wait for requests at two looks in a row, never
//     having run in between (woken and kept off the CPU the whole interval).
// A contended thread becomes SCHED_BATCH (a normal share of the CPU, no wakeup preemption)
// for `hold`, then idle again; contended again soon after, it holds twice as long (up to
// max_hold), so a CPU that stays busy costs one slow interval per hold.
//
// Pure logic: callers pass samples and the time (any monotonic clock, ns), so tests drive it
// with simulated schedules. Not thread-safe: one guard thread owns all of them.
#pragma once

#include <cstdint>

namespace efuse::accel {

enum class QueueClass : uint8_t { Batch, Idle };

struct QueueClassSettings {
  int64_t tick_ns = 4'000'000;          // a look at every idle-class queue while requests flow
  int64_t quiet_tick_ns = 100'000'000;  // ... and once the mount had none for quiet_after_ns
  int64_t quiet_after_ns = 1'000'000'000;
  int64_t hold_ns = 1'000'000'000;      // SCHED_BATCH after the first starvation
  int64_t max_hold_ns = 64'000'000'000;
  int64_t wait_limit_ns = 500'000;      // mean wait for the CPU per run that means contended
};

// What a look at one queue thread saw at now_ns: its schedstat (/proc/self/task/TID/schedstat:
// ns it waited runnable for a CPU, times it ran; cumulative, the wait counted when the run
// starts), whether the scheduler had it runnable (/proc/self/task/TID/stat state R; only
// needed when it did not run since the last look), and its wait sequence (bumped by the
// thread as it enters and as it leaves its wait for requests: odd while inside).
struct SchedSample {
  int64_t now_ns = 0;
  uint64_t delay_ns = 0;
  uint64_t runs = 0;
  bool runnable = false;
  uint64_t wait_seq = 0;
};

class QueueClassGuard {
 public:
  explicit QueueClassGuard(const QueueClassSettings& s = {}) : s_(s), hold_(s.hold_ns) {}

  // Feeds a sample; returns the class the thread should have from now on.
  QueueClass observe(const SchedSample& now) {
    if (class_ == QueueClass::Idle) {
      if (have_prev_ && is_starved(prev_, now)) {
        // Starved again soon after the last hold ended: the CPU is still contended.
        if (idle_since_ >= 0 && now.now_ns - idle_since_ < 2 * hold_)
          hold_ = hold_ * 2 > s_.max_hold_ns ? s_.max_hold_ns : hold_ * 2;
        else
          hold_ = s_.hold_ns;
        class_ = QueueClass::Batch;
        batch_until_ = now.now_ns + hold_;
        ++starved_;
      }
    } else if (now.now_ns >= batch_until_) {
      class_ = QueueClass::Idle;
      idle_since_ = now.now_ns;
    }
    prev_ = now;
    have_prev_ = true;
    return class_;
  }

  uint64_t starved() const { return starved_; }  // times found starved (cumulative)
  int64_t hold_ns() const { return hold_; }

  // Contended between looks a and b (see the top of this file).
  bool is_starved(const SchedSample& a, const SchedSample& b) const {
    if (b.runs > a.runs && b.delay_ns >= a.delay_ns)
      return (b.delay_ns - a.delay_ns) >= static_cast<uint64_t>(s_.wait_limit_ns) * (b.runs - a.runs);
    return b.runs == a.runs && b.now_ns - a.now_ns >= 1'000'000 && a.runnable && b.runnable &&
           a.wait_seq == b.wait_seq && (a.wait_seq & 1) != 0;
  }

 private:
  QueueClassSettings s_;
  QueueClass class_ = QueueClass::Idle;
  int64_t hold_;
  int64_t batch_until_ = 0;
  int64_t idle_since_ = -1;
  SchedSample prev_{};
  bool have_prev_ = false;
  uint64_t starved_ = 0;
};

}  // namespace efuse::accel

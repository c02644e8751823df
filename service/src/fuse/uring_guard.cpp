// The io_uring queue threads' scheduling class: SCHED_IDLE, so that a client woken by its
// reply stays on its CPU, under a guard that makes a starved thread SCHED_BATCH for a while
// (accel/queue_class.h has the why and the rule; docs/adaptive-io.md the numbers).
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <chrono>
#include <optional>
#include <cstring>
#include <string>
#include <vector>

#include "accel/queue_class.h"
#include "common/log.h"
#include "common/thread_name.h"
#include "common/unique_fd.h"
#include "fuse/uring_internal.h"

namespace fuse {

namespace {

using efuse::accel::QueueClass;

// Whether the scheduler has the thread runnable (running or waiting for a CPU): the state
// after the command name's closing parenthesis in /proc/self/task/TID/stat. Nullopt when the
// file cannot be read (the thread is gone).
std::optional<bool> runnable(int stat_fd) {
  char buf[512];
  ssize_t n = ::pread(stat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
  const char* paren = std::strrchr(buf, ')');
  if (paren == nullptr || paren[1] == '\0' || paren[2] == '\0') return std::nullopt;
  return paren[2] == 'R';
}

// /proc/self/task/TID/schedstat: "<ns on the CPU> <ns waiting for it> <runs>".
bool read_schedstat(int fd, efuse::accel::SchedSample* s) {
  char buf[128];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return false;
  buf[n] = '\0';
  unsigned long long run = 0, delay = 0, runs = 0;
  if (std::sscanf(buf, "%llu %llu %llu", &run, &delay, &runs) != 3) return false;
  s->delay_ns = delay;
  s->runs = runs;
  return true;
}

bool set_class(pid_t tid, QueueClass c) {
  struct sched_param p {};
  return ::sched_setscheduler(tid, c == QueueClass::Idle ? SCHED_IDLE : SCHED_BATCH, &p) == 0;
}

}  // namespace

void UringChannel::stop_guard() {
  {
    std::lock_guard lk(guard_mu_);
    guard_stop_ = true;
  }
  guard_cv_.notify_all();
  if (guard_.joinable()) guard_.join();
}

void UringChannel::guard_run() {
  efuse::name_this_thread("efuse-qguard");
  // A thread may leave SCHED_IDLE again only with CAP_SYS_NICE or a RLIMIT_NICE of 20 (a
  // unit's capability bounding set can lack the first): without that a starved thread
  // could never be helped, so every queue stays SCHED_BATCH.
  struct sched_param p {};
  if (::sched_setscheduler(0, SCHED_IDLE, &p) != 0 ||
      ::sched_setscheduler(0, SCHED_OTHER, &p) != 0) {
    LOG_WARN("io_uring queue threads stay SCHED_BATCH: a thread cannot return from SCHED_IDLE "
             "(%s; needs CAP_SYS_NICE or RLIMIT_NICE 20)", std::strerror(errno));
    return;
  }
  struct Watch {
    Queue* q;
    pid_t tid;
    efuse::UniqueFd stat;
    efuse::UniqueFd schedstat;
    efuse::accel::QueueClassGuard guard;
    uint64_t runs = 0;  // at the last look
    uint64_t seq = 1;   // wait sequence at the last look
    QueueClass applied = QueueClass::Batch;
  };
  const efuse::accel::QueueClassSettings settings;
  std::vector<Watch> watches;
  for (auto& q : queues_) {
    pid_t tid = q->tid_.load();
    std::string dir = "/proc/self/task/" + std::to_string(tid);
    efuse::UniqueFd stat(::open((dir + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
    efuse::UniqueFd sched(::open((dir + "/schedstat").c_str(), O_RDONLY | O_CLOEXEC));
    efuse::accel::SchedSample probe;
    if (tid == 0 || !stat || !sched || !read_schedstat(sched.get(), &probe)) {
      LOG_WARN("io_uring queue threads stay SCHED_BATCH: cannot watch queue %u's thread "
               "(%s/stat and schedstat: %s)", q->qid_, dir.c_str(), std::strerror(errno));
      return;
    }
    watches.push_back(Watch{q.get(), tid, std::move(stat), std::move(sched),
                            efuse::accel::QueueClassGuard(settings), probe.runs});
  }
  // Gives a queue thread class c and shows it in /metrics; false if the kernel refused.
  auto apply = [](Watch& w, QueueClass c) {
    if (!set_class(w.tid, c)) return false;
    w.applied = c;
    w.q->stats_.sched_class.store(c == QueueClass::Idle ? 1 : 0);
    return true;
  };
  unsigned idle = 0;
  for (Watch& w : watches) idle += apply(w, QueueClass::Idle) ? 1 : 0;
  LOG_INFO("io_uring queue threads: %u of %zu SCHED_IDLE under the starvation guard "
           "(EFUSE_IDLE_QUEUES=0 keeps them SCHED_BATCH)", idle, watches.size());

  constexpr uint64_t kIdleLookEvery = 25;
  uint64_t looks = 0;
  uint64_t requests = 0;
  int64_t active_at = efuse::monotonic_ns();
  bool quiet = false;
  for (;;) {
    {
      std::unique_lock lk(guard_mu_);
      const int64_t tick = quiet ? settings.quiet_tick_ns : settings.tick_ns;
      if (guard_cv_.wait_for(lk, std::chrono::nanoseconds(tick), [this] { return guard_stop_; }))
        break;
    }
    const int64_t now = efuse::monotonic_ns();
    bool running = false, any_runnable = false;
    uint64_t total = 0;
    ++looks;
    for (Watch& w : watches) {
      if (!w.q->running_.load()) continue;
      running = true;
      total += w.q->stats_.requests.load(std::memory_order_relaxed);
      efuse::accel::SchedSample s;
      s.now_ns = now;
      s.wait_seq = w.q->wait_seq_.load(std::memory_order_acquire);
      // Still inside the wait it was in at the last look: asleep (an idle queue), or woken
      // and not run. Looked at closely only every kIdleLookEvery ticks, so that a host with
      // many CPUs reads /proc for the queues that serve, not for every queue every tick; a
      // thread kept waiting that long runs now and then, and is judged by its wait then.
      if (s.wait_seq == w.seq && (s.wait_seq & 1) != 0 && looks % kIdleLookEvery != 0) continue;
      w.seq = s.wait_seq;
      if (!read_schedstat(w.schedstat.get(), &s)) continue;
      if (s.runs == w.runs) {  // did not run since the last look: asleep, or kept off the CPU
        std::optional<bool> r = runnable(w.stat.get());
        if (!r) continue;
        s.runnable = *r;
        any_runnable = any_runnable || *r;
      }
      w.runs = s.runs;
      QueueClass c = w.guard.observe(s);
      if (c == w.applied || !apply(w, c)) continue;
      if (c == QueueClass::Batch) {
        w.q->stats_.starved.fetch_add(1, std::memory_order_relaxed);
        LOG_DEBUG("io_uring queue %u: starved as SCHED_IDLE; SCHED_BATCH for %.1f s",
                  w.q->qid_, static_cast<double>(w.guard.hold_ns()) / 1e9);
      }
    }
    if (!running) break;  // the connection ended
    if (total != requests || any_runnable) {
      requests = total;
      active_at = now;
    }
    quiet = now - active_at >= settings.quiet_after_ns;
  }
  // Stopping: the queues drain their last replies at a normal share of the CPU.
  for (Watch& w : watches)
    if (w.applied == QueueClass::Idle && w.q->running_.load()) apply(w, QueueClass::Batch);
}

}  // namespace fuse

#include "fuse/offload_pool.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "common/thread_name.h"

namespace fuse {

struct OffloadPool::State {
  std::mutex mu;
  std::condition_variable work;  // a task queued, a limit lowered, stopping
  std::condition_variable gone;  // a thread left (stop() waits for the last)
  std::deque<Task> queue;
  unsigned threads = 0;  // started and not gone
  unsigned idle = 0;
  unsigned running = 0;
  unsigned max_threads = 0;
  size_t max_queued = 0;
  bool stopping = false;
  bool stopped = false;
  uint64_t submitted = 0;
  uint64_t rejected = 0;

  // A thread's loop; returns with `threads` already decremented.
  void serve() {
    std::unique_lock lk(mu);
    for (;;) {
      if (threads > max_threads) break;  // the limit was lowered: leave
      if (!queue.empty()) {
        Task t = std::move(queue.front());
        queue.pop_front();
        ++running;
        lk.unlock();
        t();
        t = nullptr;  // what it holds (its reply token) goes outside the lock
        lk.lock();
        --running;
        continue;
      }
      if (stopping) break;
      ++idle;
      work.wait(lk);
      --idle;
    }
    --threads;
    gone.notify_all();
  }

  void never_ran() {
    std::lock_guard lk(mu);
    --threads;
    gone.notify_all();
  }
};

// Travels with a thread's body: when the body is destroyed without having run (a start
// that kept it and dropped it), the thread is no longer counted.
struct OffloadPool::Ticket {
  std::shared_ptr<State> state;
  bool entered = false;
  ~Ticket() {
    if (!entered && state) state->never_ran();
  }
};

OffloadPool::OffloadPool(unsigned max_threads, size_t max_queued, StartThread start)
    : state_(std::make_shared<State>()), start_(std::move(start)) {
  state_->max_threads = max_threads == 0 ? 1 : max_threads;
  state_->max_queued = max_queued == 0 ? 1 : max_queued;
}

OffloadPool::~OffloadPool() { stop(); }

bool OffloadPool::submit(Task& task) {
  State& s = *state_;
  bool more = false;
  {
    std::lock_guard lk(s.mu);
    if (s.stopping || s.queue.size() >= s.max_queued) {
      ++s.rejected;
      return false;
    }
    // Every idle thread has a task already: one more thread, if the limit allows.
    more = s.queue.size() + 1 > s.idle && s.threads < s.max_threads;
    if (more) ++s.threads;
  }
  bool started = more;
  if (more) {
    // Outside the lock: a start that keeps the body and drops it at once (tests) takes the
    // thread back through its ticket, which locks.
    auto ticket = std::make_shared<Ticket>();  // (a temporary Ticket would count as dropped)
    ticket->state = state_;
    auto body = [ticket] {
      ticket->entered = true;
      efuse::name_this_thread("efuse-offload");
      ticket->state->serve();
    };
    try {
      if (start_)
        start_(std::move(body));
      else
        std::thread(std::move(body)).detach();
    } catch (...) {
      ticket->entered = true;  // not counted by the ticket: taken back below
      started = false;
    }
  }
  std::lock_guard lk(s.mu);
  if (more && !started) {
    --s.threads;
    s.gone.notify_all();
  }
  if (s.stopping || s.threads == 0) {
    ++s.rejected;  // nobody would run it
    return false;
  }
  s.queue.push_back(std::move(task));
  ++s.submitted;
  s.work.notify_one();
  return true;
}

void OffloadPool::set_limits(unsigned max_threads, size_t max_queued) {
  std::lock_guard lk(state_->mu);
  state_->max_threads = max_threads == 0 ? 1 : max_threads;
  state_->max_queued = max_queued == 0 ? 1 : max_queued;
  state_->work.notify_all();
}

void OffloadPool::stop() {
  State& s = *state_;
  std::deque<Task> unrun;
  {
    std::unique_lock lk(s.mu);
    if (s.stopped) return;
    s.stopping = true;
    s.work.notify_all();
    s.gone.wait(lk, [&] { return s.threads == 0; });
    s.stopped = true;
    unrun.swap(s.queue);
  }
  // Destroyed here, outside the lock: each answers its request through its token.
}

OffloadPool::Stats OffloadPool::stats() const {
  std::lock_guard lk(state_->mu);
  const State& s = *state_;
  return {s.queue.size(), s.running, s.threads, s.max_threads, s.max_queued, s.submitted,
          s.rejected};
}

}  // namespace fuse

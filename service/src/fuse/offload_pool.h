// The bounded pool that runs requests moved off their queue (queue balancing,
// accel/offload.h): at most `max_threads` threads, started when work comes and none is
// idle, and at most `max_queued` tasks waiting for one. A task the pool does not take
// (full, stopped, no thread could start) is the caller's to run: submit() says so, and the
// session then serves the request inline, as it would without balancing.
//
// Each task owns what answers its request (a DeferredReply): a task destroyed unrun (the
// pool stopped with no thread left to run it) answers through that token's backstop.
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace fuse {

class OffloadPool {
 public:
  using Task = std::function<void()>;
  // Starts a thread running `body` (the pool's worker loop); empty: a detached std::thread.
  // May throw (std::system_error) when no thread can start; tests inject that here, or keep
  // `body` without running it (the pool then counts the thread until `body` is destroyed).
  using StartThread = std::function<void(std::function<void()>)>;

  // Defaults of the per-mount settings (mounts.yaml `offload_threads`, `offload_queue`).
  static constexpr unsigned kDefaultThreads = 4;
  static constexpr size_t kDefaultQueued = 256;

  OffloadPool(unsigned max_threads, size_t max_queued, StartThread start = {});
  ~OffloadPool();  // stop()
  OffloadPool(const OffloadPool&) = delete;
  OffloadPool& operator=(const OffloadPool&) = delete;

  // Queues `task` for a pool thread; false (task untouched) when the queue is full, the
  // pool is stopping, or no thread runs and none could start: run it yourself.
  [[nodiscard]] bool submit(Task& task);
  // Live (config reload): threads above a lower limit finish their task and leave.
  void set_limits(unsigned max_threads, size_t max_queued);
  // Takes no more tasks, lets the threads run what is queued and waits for them to leave.
  // Tasks no thread is left to run are destroyed unrun. A second call does nothing.
  void stop();

  struct Stats {
    size_t queued = 0;       // waiting for a thread
    unsigned running = 0;    // being run
    unsigned threads = 0;    // threads of the pool now
    unsigned max_threads = 0;
    size_t max_queued = 0;
    uint64_t submitted = 0;  // taken, cumulative
    uint64_t rejected = 0;   // refused (full, no thread), cumulative: served inline
  };
  Stats stats() const;

 private:
  struct State;
  struct Ticket;
  std::shared_ptr<State> state_;
  StartThread start_;
};

}  // namespace fuse

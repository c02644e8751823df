// Channels: what reads a connection's requests, hands them to the Session and carries the
// replies back. A mount holds one Channel, whichever transport serves it:
//   ClassicChannel   N worker threads on /dev/fuse (this file)
//   UringChannel     FUSE over io_uring, one queue per CPU (uring_channel.h)
#pragma once

#include <csignal>
#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "accel/workers.h"
#include "common/result.h"
#include "fuse/connection.h"
#include "fuse/session.h"
#include "fuse/stats.h"

namespace fuse {

// The signal ClassicChannel::stop_for_restart interrupts a worker's read() of /dev/fuse with.
inline constexpr int kWakeSignal = SIGUSR2;

// The life cycle every channel has. Constructing one connects the session to the
// connection (Session::connect); destroying it stops the session's deferred work
// (Session::shutdown) before its transports go.
class Channel {
 public:
  virtual ~Channel() = default;
  // Serves requests on the calling thread until INIT has been answered (the kernel sends
  // INIT first, over /dev/fuse). Fails when the connection ends before that or INIT is
  // refused.
  virtual efuse::Status serve_init(std::string* error) = 0;
  // Starts serving on the channel's own threads.
  virtual efuse::Status start(std::string* error) = 0;
  // Waits for every thread to see the connection end, up to timeout_ms; false on timeout.
  virtual bool wait(int timeout_ms) = 0;
  virtual void join() = 0;
  virtual bool stopped() const = 0;
  // One entry per queue or worker thread; valid while the channel lives.
  virtual std::vector<const WorkerStats*> worker_stats() const = 0;
  virtual uint64_t channel_errors() const = 0;
  // What serves requests now: "uring" or "classic".
  virtual const char* transport() const = 0;
  // io_uring queues serving now (0 on /dev/fuse).
  virtual unsigned queue_count() const { return 0; }

  // Restart without remounting. resume(): serves a connection a previous efused answered
  // INIT on (Session::restore_state), on the channel's own threads, as start() does.
  // stop_for_restart(): the threads finish the requests they hold, reply, and stop, while
  // the connection stays up (requests wait in the kernel for the next efused); true once
  // all stopped. device_fds(): every /dev/fuse descriptor the channel reads or issues
  // commands on (the connection's own first); the fd store keeps them so that a killed
  // efused's requests in flight stay with the connection (see fuse/restart.h).
  virtual efuse::Status resume(std::string* error) = 0;
  virtual bool stop_for_restart(int timeout_ms) = 0;
  virtual std::vector<int> device_fds() const = 0;
  // Called with each /dev/fuse descriptor the channel makes after start() (a worker the
  // channel grew), from the thread that made it, so that the fd store keeps it too. Set it
  // before reading device_fds() (a descriptor may then be reported twice; the store takes
  // it once).
  virtual void set_device_fd_listener(std::function<void(int)> fn) { (void)fn; }
  // The /dev/fuse workers: how many, within which limits (live, on reload).
  virtual WorkerCount worker_count() const { return {}; }
  virtual void set_max_workers(unsigned max) { (void)max; }
};

// Classic channel: worker threads, each reading requests from its own clone of the
// connection's /dev/fuse fd (FUSE_DEV_IOC_CLONE) and replying on the same fd. `threads`
// start with the channel and always run; more start while every worker is busy, up to
// `max_threads`, and leave again when idle (accel/workers.h). A worker that leaves keeps its
// clone for the next one to start, so the channel never has more than `max_threads`
// descriptors and each one, made once, stays in the fd store (restart).
class ClassicChannel final : public Channel {
 public:
  // max_threads below threads (0 included) means threads: a fixed count.
  ClassicChannel(Session& session, Connection& conn, unsigned threads, unsigned max_threads = 0);
  ~ClassicChannel() override;
  ClassicChannel(const ClassicChannel&) = delete;
  ClassicChannel& operator=(const ClassicChannel&) = delete;

  efuse::Status serve_init(std::string* error) override;
  efuse::Status start(std::string* error) override;
  // Waits for every worker to see the connection end (ENODEV).
  bool wait(int timeout_ms) override;
  void join() override;
  bool stopped() const override;
  // One entry per worker ever started (running or not), in worker order.
  std::vector<const WorkerStats*> worker_stats() const override;
  uint64_t channel_errors() const override { return channel_errors_.load(); }
  const char* transport() const override { return "classic"; }
  unsigned threads() const { return threads_; }
  efuse::Status resume(std::string* error) override;
  bool stop_for_restart(int timeout_ms) override;
  std::vector<int> device_fds() const override;
  void set_device_fd_listener(std::function<void(int)> fn) override;
  WorkerCount worker_count() const override;
  void set_max_workers(unsigned max) override;

  static constexpr unsigned kMaxWorkers = 256;  // mounts.yaml's bound of max_threads

 private:
  class Worker;
  void run(Worker& w);
  // Starts one more worker (a parked one first); false when none can start.
  bool grow(std::string* error);
  efuse::Status start_worker(Worker& w, std::string* error);

  Session& session_;
  Connection& conn_;
  unsigned threads_;
  efuse::accel::WorkerCountPolicy policy_;
  // Workers by index, created on demand and never destroyed before the channel: their
  // stats and clones stay. count_ of them exist (published after construction).
  std::array<std::unique_ptr<Worker>, kMaxWorkers> workers_;
  std::atomic<unsigned> count_{0};
  mutable std::mutex grow_mu_;  // creating, restarting and joining workers
  bool joining_ = false;        // under grow_mu_: no more workers start
  std::function<void(int)> fd_listener_;  // under grow_mu_
  std::atomic<unsigned> running_{0};
  std::atomic<unsigned> busy_{0};
  std::atomic<uint64_t> grown_{0};
  std::atomic<uint64_t> retired_{0};
  std::atomic<bool> draining_{false};  // stop_for_restart: stop after the current request
  std::atomic<uint64_t> channel_errors_{0};
};

}  // namespace fuse

// Classic channel: N worker threads, each reading requests from its own clone of the
// connection's /dev/fuse fd (FUSE_DEV_IOC_CLONE) and replying on the same fd.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "fuse/session.h"
#include "fuse/stats.h"

namespace fuse {

class ClassicChannel {
 public:
  ClassicChannel(Session& session, int dev_fd, unsigned threads);
  ~ClassicChannel();
  ClassicChannel(const ClassicChannel&) = delete;
  ClassicChannel& operator=(const ClassicChannel&) = delete;

  // Serves requests on the calling thread until INIT has been answered (the kernel sends
  // INIT first). Fails when the connection ends before that or INIT is refused.
  efuse::Status serve_init(std::string* error);
  // Starts the worker threads.
  efuse::Status start(std::string* error);
  // Waits for every worker to see the connection end (ENODEV), up to timeout_ms;
  // returns false on timeout.
  bool wait(int timeout_ms);
  void join();
  bool stopped() const;
  // One entry per worker thread, in worker order; valid while the channel lives.
  std::vector<const WorkerStats*> worker_stats() const;
  unsigned threads() const { return threads_; }
  // Where notifications go (any fd of the connection will do); valid after serve_init().
  Transport& notify_transport();
  uint64_t channel_errors() const { return channel_errors_.load(); }

 private:
  class Worker;
  void run(Worker& w);

  Session& session_;
  int dev_fd_;
  unsigned threads_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<unsigned> running_{0};
  std::atomic<uint64_t> channel_errors_{0};
};

}  // namespace fuse

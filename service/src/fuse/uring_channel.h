// FUSE-over-io_uring channel (Linux >= 6.14): one queue per possible CPU, each served by its
// own thread pinned to that CPU with its own io_uring, plus the classic /dev/fuse reader(s)
// for what the kernel still sends there (INIT, FORGET / BATCH_FORGET, INTERRUPT).
//
// Life cycle (the Channel interface, channel.h, plus the fallback steps):
//   supported()        before mounting: may the session ask for io_uring at INIT?
//   serve_init()       answers INIT over /dev/fuse (SessionOptions::io_uring asks for it)
//   start()            if INIT granted io_uring: sets up and registers every queue, then
//                      starts the /dev/fuse reader(s). On failure the kernel is, where
//                      possible, switched back to plain /dev/fuse (classic_fallback_ready())
//                      and start_classic() serves everything the classic way.
//   wait() / stopped() / join()   the connection ending stops every thread
//
// See uring_kernel.h for the kernel's side of the protocol.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/result.h"
#include "fuse/channel.h"
#include "fuse/session.h"
#include "fuse/stats.h"
#include "fuse/uring_kernel.h"

namespace fuse {

namespace uring {

// Size of the payload buffer the kernel requires of every entry:
// max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page_size).
size_t payload_size(uint32_t max_write, uint16_t max_pages, size_t page_size);

// The memory of one ring entry: [prefix | payload], page aligned. The prefix starts with the
// fuse_uring_req_header the kernel writes; the request is reassembled in the prefix's tail,
// right in front of the payload, so names and write data are never copied.
class EntryBuffer {
 public:
  static constexpr size_t kPrefix = 4096;

  // nullptr (and *err = errno) when the memory cannot be mapped.
  static std::unique_ptr<EntryBuffer> create(size_t payload_capacity, int* err);
  ~EntryBuffer();
  EntryBuffer(const EntryBuffer&) = delete;
  EntryBuffer& operator=(const EntryBuffer&) = delete;

  kernel::fuse_uring_req_header* header() {
    return reinterpret_cast<kernel::fuse_uring_req_header*>(base_);
  }
  char* payload() { return base_ + kPrefix; }
  size_t payload_capacity() const { return capacity_; }
  // iov[0] = header, iov[1] = payload: what REGISTER hands the kernel.
  const struct iovec* register_iov() const { return iov_; }

  uint64_t commit_id() const;
  // Bytes of request payload the kernel wrote (names, write data, extensions).
  uint32_t request_payload_size() const;
  // fuse_in_header + op_in + payload as one buffer, in the form Session::handle takes (what
  // a /dev/fuse read returns). Empty when the sizes the kernel reported do not add up; then
  // *why says how.
  std::span<const char> assemble_request(const char** why);

  // Stores a reply: iov[0] is the fuse_out_header, the rest its payload pieces, which may
  // already lie in the payload buffer (a read into payload() as scratch). Returns 0, or
  // -EOVERFLOW when the pieces do not fit (an EIO reply is stored instead).
  int encode_reply(const struct iovec* iov, int count);

 private:
  EntryBuffer(char* base, size_t map_size, size_t capacity);
  char* base_;
  size_t map_size_;
  size_t capacity_;
  struct iovec iov_[kernel::kUringIovSegs];
};

}  // namespace uring

class UringChannel final : public Channel {
 public:
  // `queue_depth` ring entries per queue (each holds a payload buffer of about max_write);
  // `classic_threads` /dev/fuse readers (1 is plenty while the rings run; it is also how
  // many classic workers serve after a fallback, growing up to `classic_max_threads`).
  // `idle_queues`: run the queue threads SCHED_IDLE under the starvation guard
  // (accel/queue_class.h, uring_guard.cpp); false keeps them SCHED_BATCH.
  UringChannel(Session& session, Connection& conn, unsigned queue_depth,
               unsigned classic_threads = 1, unsigned classic_max_threads = 0,
               bool idle_queues = true);
  ~UringChannel() override;
  UringChannel(const UringChannel&) = delete;
  UringChannel& operator=(const UringChannel&) = delete;

  // Whether this kernel and process can serve FUSE over io_uring: the fuse module's
  // enable_uring parameter (turned on, and logged, when it is off and we are root) and an
  // io_uring with 128-byte SQEs. When the parameter cannot be read (a container's /sys)
  // that is logged once and the kernel decides at INIT (start() then falls back if it does
  // not offer io_uring). *why says exactly what failed (path, errno) otherwise.
  // Call before mounting; set SessionOptions::io_uring from it.
  static efuse::Status supported(std::string* why);

  // Makes the kernel stop waiting for rings on this connection and serve every request over
  // /dev/fuse again (a deliberately invalid REGISTER: the kernel drops io_uring on a failed
  // registration). Only valid while no queue was ever completely registered.
  static efuse::Status drop_kernel_uring(int dev_fd, std::string* why);

  // Serves INIT over /dev/fuse on the calling thread (as ClassicChannel::serve_init).
  efuse::Status serve_init(std::string* error) override;
  // Sets up and registers every queue and starts its thread, then the /dev/fuse reader(s).
  // Needs INIT to have granted io_uring. On failure nothing of the rings runs; see
  // classic_fallback_ready().
  efuse::Status start(std::string* error) override;
  // After a failed start(): true when the kernel now serves this connection over /dev/fuse
  // (io_uring was not granted, or it was dropped), so start_classic() can take over. False
  // means the connection cannot serve requests: abort it.
  bool classic_fallback_ready() const { return fallback_ready_; }
  // Starts the /dev/fuse workers alone (classic_threads of them).
  efuse::Status start_classic(std::string* error);

  // Waits until every thread saw the connection end, up to timeout_ms; false on timeout.
  bool wait(int timeout_ms) override;
  void join() override;
  bool stopped() const override;
  // Queues in qid order (queue_count() of them; empty unless the rings run), then the
  // /dev/fuse workers. Valid while the channel lives.
  std::vector<const WorkerStats*> worker_stats() const override;
  unsigned queue_count() const override {
    return rings_active() ? static_cast<unsigned>(queues_.size()) : 0;
  }
  const char* transport() const override { return rings_active() ? "uring" : "classic"; }
  bool rings_active() const { return rings_active_.load(); }
  unsigned queue_depth() const { return depth_; }
  uint64_t channel_errors() const override;
  // A resumed connection: /dev/fuse readers, when INIT did not grant io_uring. One that ran
  // rings cannot be resumed (EOPNOTSUPP): when a ring dies, the kernel ends the request it
  // was handing to an entry with ECANCELED and never answers one an entry held.
  efuse::Status resume(std::string* error) override;
  bool stop_for_restart(int timeout_ms) override;
  std::vector<int> device_fds() const override;
  // The /dev/fuse workers beside the rings (or after a fallback).
  void set_device_fd_listener(std::function<void(int)> fn) override {
    classic_.set_device_fd_listener(std::move(fn));
  }
  WorkerCount worker_count() const override { return classic_.worker_count(); }
  void set_max_workers(unsigned max) override { classic_.set_max_workers(max); }

 private:
  class Entry;
  class Queue;
  void stop_queues();
  void guard_run();   // uring_guard.cpp
  void stop_guard();

  Session& session_;
  Connection& conn_;
  unsigned depth_;
  ClassicChannel classic_;  // destroyed last: joins the /dev/fuse workers
  std::vector<std::unique_ptr<Queue>> queues_;
  std::atomic<bool> rings_active_{false};
  std::atomic<uint64_t> channel_errors_{0};
  bool fallback_ready_ = false;
  // The starvation guard of the queue threads' scheduling class.
  const bool idle_queues_;
  std::thread guard_;
  std::mutex guard_mu_;
  std::condition_variable guard_cv_;
  bool guard_stop_ = false;
};

}  // namespace fuse

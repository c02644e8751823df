// Internals of the io_uring channel shared by uring_*.cpp (not part of its interface): the
// ring entry and queue types, the command helpers, the kernel-state probe the start-up
// errors quote.
#pragma once

#include <liburing.h>

#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "fuse/uring_channel.h"

namespace fuse {

namespace uring_detail {

namespace k = kernel;

inline constexpr uint64_t kEventTag = 1;     // user_data of the eventfd read; entries are pointers
inline constexpr uint64_t kSentinelTag = 2;  // user_data of the exit sentinel's poll
inline constexpr int kStartTimeoutMs = 10000;

inline thread_local const void* t_current_queue = nullptr;

// Ring commands name their /dev/fuse fd directly, never as a registered (fixed) file: see
// "Dying without a goodbye" at UringChannel::Queue.
inline void prep_uring_cmd(struct io_uring_sqe* sqe, int fd, k::UringCmd cmd, uint16_t qid,
                    uint64_t commit_id, uint64_t user_data) {
  std::memset(sqe, 0, 128);  // SQE128: the command area is the upper 80 bytes
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = static_cast<uint32_t>(cmd);
  sqe->user_data = user_data;
  k::fuse_uring_cmd_req req{};
  req.qid = qid;
  req.commit_id = commit_id;
  std::memcpy(sqe->cmd, &req, sizeof req);
}

inline bool is_teardown_error(int err) {
  return err == ENOTCONN || err == ECANCELED || err == ECONNABORTED || err == ENODEV;
}

// Opcodes that take no reply; they come over /dev/fuse, never over a ring, but an entry
// must not stay parked forever if one ever did.
inline bool takes_no_reply(uint32_t opcode) {
  auto op = static_cast<k::Opcode>(opcode);
  return op == k::Opcode::Forget || op == k::Opcode::BatchForget ||
         op == k::Opcode::Interrupt || op == k::Opcode::NotifyReply;
}


// What the enable_uring parameter said, for the log of a fallback: "" when it was Y (or
// efused turned it on), else the state or the error in words (uring_probe.cpp).
std::string enable_uring_state();

}  // namespace uring_detail

class UringChannel::Entry final : public Transport {
 public:
  Entry(Queue& q, std::unique_ptr<uring::EntryBuffer> buf) : q_(q), buf_(std::move(buf)) {}
  int send(const struct iovec* iov, int count) override;
  // The session answers this entry's request later (DeferredReply): it stays parked, and
  // its reply is committed through defer_commit() from whichever thread sends it.
  void defer() override { deferred_ = true; }

  Queue& q_;
  std::unique_ptr<uring::EntryBuffer> buf_;
  bool replied_ = false;    // a reply was stored by the queue thread itself
  bool in_kernel_ = false;  // a command of this entry is pending in the kernel
  bool dead_ = false;       // the kernel no longer knows this entry
  bool deferred_ = false;   // its reply comes later; reset when the entry is committed
};

// Dying without a goodbye (kill -9): the kernel aborts a FUSE connection when the last file
// of its /dev/fuse devices is released. Every ring command pending in the kernel holds a
// reference to the file it was issued on (a registered "fixed" file is even held by the
// ring until the ring is freed), and at exit a task cancels only its *tracked* io_uring
// requests (those on io_uring fds); the FUSE commands are cancelled later, by io_uring's
// asynchronous ring teardown on a workqueue. Until that has run the dead server's
// connection stays up: requests sent meanwhile queue on a ring nobody serves and end
// with ECONNABORTED when the abort finally comes, instead of ENOTCONN at once (measured
// here: 1-55 ms after the server was reaped, longer on a loaded machine).
// So that dying aborts the connection before the process is reaped, each queue
//   - issues its commands on its own clone of the /dev/fuse fd, by fd, never fixed, and
//   - keeps one tracked request in flight: a POLLIN poll on an idle io_uring of its own
//     (the sentinel), which never completes. Its presence makes the exiting queue thread
//     run io_uring's cancellation pass, which also cancels this thread's FUSE commands
//     (IO_URING_F_CANCEL, answered by the kernel with ENOTCONN); their file references go
//     with them, and closing the fds at exit releases the last of the connection's files.
// Each part degrades to the kernel's deferred teardown if it cannot be set up.
class UringChannel::Queue {
 public:
  enum class Phase { Starting, SetupDone, SetupFailed, Registered, RegisterFailed };
  enum class Command { None, Go, Abort };

  Queue(UringChannel& ch, unsigned qid, unsigned depth, size_t payload, efuse::UniqueFd evfd)
      : ch_(ch), qid_(qid), depth_(depth), payload_(payload), evfd_(std::move(evfd)) {}
  ~Queue() {
    if (thread_.joinable()) thread_.join();

  }

  void run();
  void stop() {
    stop_.store(true);
    {
      std::lock_guard lk(mu_);
      if (cmd_ == Command::None) cmd_ = Command::Abort;
    }
    cv_.notify_all();
    wake();
  }
  void wake() {
    uint64_t one = 1;
    ssize_t n = ::write(evfd_.get(), &one, sizeof one);
    (void)n;
  }
  // From a thread other than the queue's: a deferred reply is ready in `e`.
  int defer_commit(Entry& e) {
    {
      std::lock_guard lk(mu_);
      if (closed_) return -ENOTCONN;
      deferred_.push_back(&e);
    }
    wake();
    return 0;
  }

  UringChannel& ch_;
  const unsigned qid_;
  const unsigned depth_;
  const size_t payload_;
  efuse::UniqueFd evfd_;
  std::thread thread_;
  WorkerStats stats_;
  std::atomic<bool> running_{true};
  // The queue thread's id (set by setup()) and its wait sequence: bumped as it enters and
  // as it leaves its wait for requests, so odd while inside (the starvation guard's view,
  // accel/queue_class.h).
  std::atomic<pid_t> tid_{0};
  std::atomic<uint64_t> wait_seq_{0};
  std::atomic<bool> stop_{false};

  // Start handshake and deferred replies, under mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  Phase phase_ = Phase::Starting;
  Command cmd_ = Command::None;
  std::string error_;
  std::vector<Entry*> deferred_;
  bool closed_ = false;

  std::vector<std::unique_ptr<Entry>> entries_;
  // This queue's clone of the connection's /dev/fuse fd (UringChannel::device_fds).
  int cmd_fd() const { return own_cmd_fd_ ? own_cmd_fd_.get() : -1; }

 private:
  bool setup(std::string* error);
  bool register_first(std::string* error);
  void register_rest();
  void loop();
  void finish();
  void report(Phase p, const std::string& error);
  struct io_uring_sqe* sqe();
  void arm_event();
  void arm_sentinel();
  void drain();
  void commit(Entry& e);
  void on_cqe(const struct io_uring_cqe* cqe);
  void handle(Entry& e);

  struct io_uring ring_ {};
  bool ring_ok_ = false;
  efuse::UniqueFd own_cmd_fd_;  // this queue's clone of the connection's fd, if it has one
  int cmd_fd_ = -1;  // the /dev/fuse fd this queue's commands name: own_cmd_fd_, else the connection's
  struct io_uring sentinel_ {};
  bool sentinel_ok_ = false;
  std::vector<char> scratch_;
  uint64_t event_value_ = 0;
  unsigned in_kernel_ = 0;
  bool conn_dead_ = false;
  // monotonic_ns() of the latest wake-up or request end: the next request's start and the next
  // wait's start, so a request costs two clock reads (0: read the clock).
  uint64_t now_ = 0;
};

}  // namespace fuse

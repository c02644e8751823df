// io_uring channel: one queue (its thread, ring, entries and deferred commits).
#include "fuse/uring_channel.h"

#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/opcodes.h"
#include "fuse/uring_internal.h"

namespace fuse {

namespace k = kernel;
using namespace uring_detail;

int UringChannel::Entry::send(const struct iovec* iov, int count) {
  int rc = buf_->encode_reply(iov, count);
  if (rc < 0) {
    size_t total = 0;
    for (int i = 1; i < count; ++i) total += iov[i].iov_len;
    q_.ch_.channel_errors_.fetch_add(1, std::memory_order_relaxed);
    LOG_ERROR("io_uring queue %u: a %zu-byte reply does not fit the %zu-byte payload buffer; "
              "sent EIO instead", q_.qid_, total, buf_->payload_capacity());
  }
  if (t_current_queue == &q_ && !deferred_) {
    replied_ = true;  // committed by the queue thread once Session::handle returns
    return 0;
  }
  return q_.defer_commit(*this);
}

void UringChannel::Queue::report(Phase p, const std::string& error) {
  {
    std::lock_guard lk(mu_);
    phase_ = p;
    error_ = error;
  }
  cv_.notify_all();
}

bool UringChannel::Queue::setup(std::string* error) {
  efuse::name_this_thread("efuse-uring%u", qid_);
  tid_.store(static_cast<pid_t>(::gettid()));
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(qid_, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0)
    LOG_INFO("io_uring queue %u: cannot pin its thread to CPU %u (%s); it runs unpinned", qid_,
             qid_, strerror(rc));
  // The kernel queues a request on the ring of the CPU its sender runs on, i.e. this
  // thread's. A sender that waits for the answer sleeps at once and this thread runs; one
  // that goes on (RELEASE after close(), readahead, writeback) was preempted by this
  // thread's wakeup only for work nobody waits for, at two context switches a request.
  // SCHED_BATCH makes the wakeup not preempt: the work runs when the CPU next reschedules
  // (the sender sleeps, typically on its next request, or its time slice ends), together
  // with that next request. Waited-for requests are served as soon as before. The
  // starvation guard (uring_guard.cpp) then makes it SCHED_IDLE where it can.
  struct sched_param batch {};
  rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
  if (rc != 0)
    LOG_INFO("io_uring queue %u: cannot make its thread SCHED_BATCH (%s)", qid_, strerror(rc));
  else
    stats_.sched_class.store(0);

  // Buffers are touched first by this (pinned) thread, so they land on its NUMA node.
  for (unsigned i = 0; i < depth_; ++i) {
    int err = 0;
    auto buf = uring::EntryBuffer::create(payload_, &err);
    if (!buf) {
      *error = "cannot map a " + std::to_string(payload_) + "-byte ring buffer: " + strerror(err);
      return false;
    }
    std::memset(buf->header(), 0, sizeof(k::fuse_uring_req_header));
    entries_.push_back(std::make_unique<Entry>(*this, std::move(buf)));
  }
  scratch_.resize(ch_.session_.request_buffer_size());

  // One SQE per entry plus the eventfd read and the sentinel poll; each has at most one
  // command in flight, so the CQ (twice as large) never overflows.
  unsigned sq = depth_ + 3;
  struct io_uring_params p {};
  p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = sq * 2;
  rc = io_uring_queue_init_params(sq, &ring_, &p);
  if (rc == -EINVAL) {
    p = {};
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
    p.cq_entries = sq * 2;
    rc = io_uring_queue_init_params(sq, &ring_, &p);
  }
  if (rc < 0) {
    *error = std::string("io_uring_setup with 128-byte SQEs failed: ") + strerror(-rc);
    return false;
  }
  ring_ok_ = true;
  (void)io_uring_register_ring_fd(&ring_);

  // See "Dying without a goodbye" above.
  auto clone = ch_.conn_.clone();
  if (clone.ok()) own_cmd_fd_ = std::move(*clone);
  // Without a clone the connection's fd works the same; it shares one file's refcount.
  cmd_fd_ = own_cmd_fd_ ? own_cmd_fd_.get() : ch_.conn_.fd();
  rc = io_uring_queue_init(1, &sentinel_, 0);
  sentinel_ok_ = rc == 0;
  if (!sentinel_ok_)
    LOG_WARN("io_uring queue %u: no exit sentinel (io_uring_setup: %s); if efused is killed, "
             "its mount fails with ENOTCONN only once the kernel's io_uring cleanup has run",
             qid_, strerror(-rc));
  return true;
}

struct io_uring_sqe* UringChannel::Queue::sqe() {
  struct io_uring_sqe* s = io_uring_get_sqe(&ring_);
  if (s == nullptr) {
    (void)io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

bool UringChannel::Queue::register_first(std::string* error) {
  arm_sentinel();  // before any command exists that the sentinel must cover
  Entry& e = *entries_.front();
  struct io_uring_sqe* s = sqe();
  if (s == nullptr) {
    *error = "no free SQE on a fresh io_uring";
    return false;
  }
  prep_uring_cmd(s, cmd_fd_, k::UringCmd::Register, static_cast<uint16_t>(qid_), 0,
                 reinterpret_cast<uint64_t>(&e));
  s->addr = reinterpret_cast<uint64_t>(e.buf_->register_iov());
  s->len = k::kUringIovSegs;
  int rc = io_uring_submit(&ring_);
  if (rc < 0) {
    *error = std::string("submitting REGISTER failed: ") + strerror(-rc);
    return false;
  }
  e.in_kernel_ = true;
  ++in_kernel_;
  // A refused REGISTER completes at once; an accepted one stays pending until a request
  // comes (which may already happen if this queue completed the set). Look briefly.
  struct __kernel_timespec ts {};
  ts.tv_nsec = 2 * 1000 * 1000;
  struct io_uring_cqe* cqe = nullptr;
  rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
  if (rc == 0 && cqe != nullptr && cqe->user_data == reinterpret_cast<uint64_t>(&e) &&
      cqe->res < 0) {
    int err = -cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    e.in_kernel_ = false;
    e.dead_ = true;
    --in_kernel_;
    *error = std::string("the kernel refused FUSE_IO_URING_CMD_REGISTER: ") + strerror(err);
    if (err == EOPNOTSUPP) *error += " (io_uring is disabled for FUSE: enable_uring is N)";
    return false;
  }
  return true;  // a res 0 CQE (a request) stays in the CQ for the loop
}

void UringChannel::Queue::register_rest() {
  for (size_t i = 1; i < entries_.size(); ++i) {
    Entry& e = *entries_[i];
    struct io_uring_sqe* s = sqe();
    if (s == nullptr) break;
    prep_uring_cmd(s, cmd_fd_, k::UringCmd::Register, static_cast<uint16_t>(qid_), 0,
                   reinterpret_cast<uint64_t>(&e));
    s->addr = reinterpret_cast<uint64_t>(e.buf_->register_iov());
    s->len = k::kUringIovSegs;
    e.in_kernel_ = true;
    ++in_kernel_;
  }
  arm_event();
}

void UringChannel::Queue::arm_event() {
  struct io_uring_sqe* s = sqe();
  if (s == nullptr) return;
  std::memset(s, 0, 128);
  io_uring_prep_read(s, evfd_.get(), &event_value_, sizeof event_value_, 0);
  s->user_data = kEventTag;
}

void UringChannel::Queue::arm_sentinel() {
  if (!sentinel_ok_) return;
  struct io_uring_sqe* s = sqe();
  if (s == nullptr) return;
  std::memset(s, 0, 128);
  io_uring_prep_poll_add(s, sentinel_.ring_fd, POLLIN);
  s->user_data = kSentinelTag;
}

void UringChannel::Queue::commit(Entry& e) {
  struct io_uring_sqe* s = sqe();
  if (s == nullptr) {
    // Cannot happen: every entry has at most one command and the SQ holds them all.
    ch_.channel_errors_.fetch_add(1, std::memory_order_relaxed);
    LOG_ERROR("io_uring queue %u: no free SQE to commit a reply; entry lost", qid_);
    e.dead_ = true;
    return;
  }
  prep_uring_cmd(s, cmd_fd_, k::UringCmd::CommitAndFetch, static_cast<uint16_t>(qid_),
                 e.buf_->commit_id(), reinterpret_cast<uint64_t>(&e));
  e.in_kernel_ = true;
  ++in_kernel_;
}

void UringChannel::Queue::handle(Entry& e) {
  const uint64_t t0 = now_ != 0 ? now_ : monotonic_ns();
  uint64_t end = 0;
  stats_.in_flight.store(1, std::memory_order_relaxed);
  e.replied_ = false;
  e.deferred_ = false;
  const char* why = nullptr;
  std::span<const char> request = e.buf_->assemble_request(&why);
  uint32_t opcode = 0;
  if (request.empty()) {
    ch_.channel_errors_.fetch_add(1, std::memory_order_relaxed);
    LOG_ERROR("io_uring queue %u: malformed ring request (%s); replying EIO", qid_, why);
    k::fuse_out_header oh{sizeof oh, -EIO, e.buf_->commit_id()};
    struct iovec iov{&oh, sizeof oh};
    (void)e.buf_->encode_reply(&iov, 1);
    e.replied_ = true;
  } else {
    k::fuse_in_header in;
    std::memcpy(&in, request.data(), sizeof in);
    opcode = in.opcode;
    // Requests without a payload (READ, READDIR, GETATTR, ...) may build their reply right
    // in the payload buffer, which the kernel then reads without a copy on our side.
    std::span<char> scratch = e.buf_->request_payload_size() == 0
                                  ? std::span<char>(e.buf_->payload(), e.buf_->payload_capacity())
                                  : std::span<char>(scratch_);
    end = ch_.session_.handle(request, e, scratch, t0);
  }
  if (!e.replied_ && takes_no_reply(opcode)) {
    LOG_WARN("io_uring queue %u: %s arrived on a ring; recycling its entry", qid_,
             opcode_name(opcode));
    k::fuse_out_header oh{sizeof oh, 0, e.buf_->commit_id()};
    struct iovec iov{&oh, sizeof oh};
    (void)e.buf_->encode_reply(&iov, 1);
    e.replied_ = true;
  }
  // Deferred (Entry::defer): the session answers later, maybe from another thread, through
  // Entry::send and defer_commit. The entry stays parked until then.
  if (e.replied_) commit(e);
  stats_.in_flight.store(0, std::memory_order_relaxed);
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  now_ = end != 0 ? end : monotonic_ns();
  stats_.busy_ns.fetch_add(now_ - t0, std::memory_order_relaxed);
}

void UringChannel::Queue::on_cqe(const struct io_uring_cqe* cqe) {
  if (cqe->user_data == kEventTag) {
    if (!stop_.load()) arm_event();
    return;
  }
  if (cqe->user_data == kSentinelTag) {
    // Never expected while the queue runs: nothing is ever submitted on the sentinel. Not
    // re-armed (a ready poll would complete again at once).
    if (!stop_.load() && cqe->res != -ECANCELED)
      LOG_WARN("io_uring queue %u: the exit sentinel completed (%s); if efused is killed, its "
               "mount fails with ENOTCONN only once the kernel's io_uring cleanup has run",
               qid_, cqe->res < 0 ? strerror(-cqe->res) : "ready");
    return;
  }
  Entry& e = *reinterpret_cast<Entry*>(cqe->user_data);
  e.in_kernel_ = false;
  --in_kernel_;
  if (cqe->res < 0) {
    int err = -cqe->res;
    e.dead_ = true;
    if (is_teardown_error(err)) {
      conn_dead_ = true;
    } else {
      ch_.channel_errors_.fetch_add(1, std::memory_order_relaxed);
      LOG_ERROR("io_uring queue %u: ring command failed: %s; entry lost (%u left in kernel)",
                qid_, strerror(err), in_kernel_);
    }
    return;
  }
  handle(e);
}

void UringChannel::Queue::loop() {
  for (;;) {
    if (stop_.load()) {
      drain();
      break;
    }
    if (in_kernel_ == 0 && conn_dead_) break;
    const uint64_t t0 = now_ != 0 ? now_ : monotonic_ns();
    wait_seq_.store(wait_seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    int rc = io_uring_submit_and_wait(&ring_, 1);
    wait_seq_.store(wait_seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    now_ = monotonic_ns();
    stats_.wait_ns.fetch_add(now_ - t0, std::memory_order_relaxed);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
      ch_.channel_errors_.fetch_add(1, std::memory_order_relaxed);
      LOG_ERROR("io_uring queue %u: io_uring_enter failed: %s; queue stops", qid_,
                strerror(-rc));
      break;
    }
    unsigned head;
    unsigned n = 0;
    struct io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      on_cqe(cqe);
    }
    io_uring_cq_advance(&ring_, n);

    std::vector<Entry*> ready;
    {
      std::lock_guard lk(mu_);
      ready.swap(deferred_);
    }
    for (Entry* e : ready) {
      if (!e->dead_ && !e->in_kernel_) commit(*e);
    }
  }
}

// Before the ring closes: replies committed but not yet submitted go to the kernel. Each
// COMMIT_AND_FETCH may at once hand its entry the next queued request, which is answered
// too, until the queue has been quiet for two short looks (or after a bound, under a load
// that never pauses). A request handed to an entry after the last look is lost with the
// ring: the kernel resends only what /dev/fuse readers hold (README, "Restart and upgrade").
void UringChannel::Queue::drain() {
  int quiet = 0;
  for (int round = 0; round < 1000 && quiet < 2; ++round) {
    if (io_uring_sq_ready(&ring_) > 0) (void)io_uring_submit(&ring_);
    struct __kernel_timespec ts {};
    ts.tv_nsec = 2 * 1000 * 1000;
    struct io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe_timeout(&ring_, &cqe, &ts) != 0) {
      ++quiet;
      continue;
    }
    quiet = 0;
    now_ = monotonic_ns();
    unsigned head;
    unsigned n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      on_cqe(cqe);
    }
    io_uring_cq_advance(&ring_, n);
  }
  if (io_uring_sq_ready(&ring_) > 0) (void)io_uring_submit(&ring_);
}

void UringChannel::Queue::finish() {
  {
    std::lock_guard lk(mu_);
    closed_ = true;
    deferred_.clear();
  }
  // Closing the ring cancels the commands still pending in the kernel (they complete with
  // -ENOTCONN inside the kernel); with the queue thread gone no request can be copied into
  // our buffers any more.
  if (ring_ok_) io_uring_queue_exit(&ring_);
  ring_ok_ = false;
  if (sentinel_ok_) io_uring_queue_exit(&sentinel_);
  sentinel_ok_ = false;
  running_.store(false);
  running_.notify_all();
}

void UringChannel::Queue::run() {
  t_current_queue = this;
  std::string error;
  bool ok = setup(&error);
  report(ok ? Phase::SetupDone : Phase::SetupFailed, error);
  {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [this] { return cmd_ != Command::None; });
    if (cmd_ == Command::Abort) ok = false;
  }
  if (ok) {
    ok = register_first(&error);
    report(ok ? Phase::Registered : Phase::RegisterFailed, error);
  }
  if (ok) {
    register_rest();
    loop();
  }
  finish();
}

}  // namespace fuse

// io_uring channel: life cycle (start with its two-phase registration and fallback, stop,
// wait) and what it reports. The queues are in uring_queue.cpp, entry memory in
// uring_buffer.cpp, the kernel checks in uring_probe.cpp.
#include "fuse/uring_channel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "common/system.h"
#include "fuse/uring_internal.h"

namespace fuse {

namespace k = kernel;
using namespace uring_detail;


UringChannel::UringChannel(Session& session, Connection& conn, unsigned queue_depth,
                           unsigned classic_threads, unsigned classic_max_threads,
                           bool idle_queues)
    : session_(session),
      conn_(conn),
      depth_(queue_depth == 0 ? 1 : queue_depth),
      classic_(session, conn, classic_threads, classic_max_threads),
      idle_queues_(idle_queues) {}

UringChannel::~UringChannel() {
  stop_queues();
  // Blocking-lock waiters may still hold an entry as their Transport (a DeferredReply):
  // stop them while the entries exist. (~ClassicChannel calls shutdown again; the second
  // call does nothing.)
  session_.shutdown();
  queues_.clear();
  // classic_ (declared first) goes last: it joins the /dev/fuse workers.
}

void UringChannel::stop_queues() {
  stop_guard();
  for (auto& q : queues_) q->stop();
  for (auto& q : queues_)
    if (q->thread_.joinable()) q->thread_.join();
}

efuse::Status UringChannel::serve_init(std::string* error) { return classic_.serve_init(error); }

efuse::Status UringChannel::start_classic(std::string* error) { return classic_.start(error); }

efuse::Status UringChannel::start(std::string* error) {
  if (!session_.initialized()) {
    *error = "io_uring queues can only be registered after INIT was answered";
    return efuse::Errno{EINVAL};
  }
  if (!queues_.empty()) return efuse::Errno{EALREADY};
  const Negotiated& n = session_.negotiated();
  if (!n.has(k::init::kOverIoUring)) {
    fallback_ready_ = true;
    if (n.kernel_flags & k::init::kOverIoUring) {
      *error = "FUSE_OVER_IO_URING was offered but not requested at INIT (SessionOptions::io_uring)";
    } else {
      std::string state = enable_uring_state();
      *error = "the kernel did not offer FUSE over io_uring at INIT (" +
               (state.empty() ? std::string(k::kEnableUringParam) + " is Y" : state) + ")";
    }
    return efuse::Errno{EOPNOTSUPP};
  }

  unsigned nr = efuse::possible_cpus();
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t payload = uring::payload_size(n.max_write, n.max_pages, page);

  auto fail = [&](const std::string& why) -> efuse::Status {
    stop_queues();
    queues_.clear();
    std::string drop_why;
    efuse::Status d = drop_kernel_uring(conn_.fd(), &drop_why);
    fallback_ready_ = d.ok();
    *error = why + (fallback_ready_ ? "; the kernel now serves this mount over /dev/fuse"
                                    : "; cannot switch the kernel back to /dev/fuse: " + drop_why);
    return efuse::Errno{EIO};
  };

  for (unsigned qid = 0; qid < nr; ++qid) {
    efuse::UniqueFd evfd(eventfd(0, EFD_CLOEXEC));
    if (!evfd) return fail(std::string("eventfd: ") + strerror(errno));
    queues_.push_back(std::make_unique<Queue>(*this, qid, depth_, payload, std::move(evfd)));
    Queue& q = *queues_.back();
    try {
      q.thread_ = std::thread(&Queue::run, &q);
    } catch (const std::system_error& e) {
      q.running_.store(false);
      return fail(std::string("cannot start an io_uring queue thread: ") + e.what());
    }
  }

  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStartTimeoutMs);
  auto await = [&](auto done) -> std::string {
    std::string problems;
    for (auto& q : queues_) {
      std::unique_lock lk(q->mu_);
      if (!q->cv_.wait_until(lk, deadline, [&] { return done(q->phase_); })) {
        problems += "queue " + std::to_string(q->qid_) + ": no answer in time; ";
        continue;
      }
      if (q->phase_ == Queue::Phase::SetupFailed || q->phase_ == Queue::Phase::RegisterFailed)
        problems += "queue " + std::to_string(q->qid_) + ": " + q->error_ + "; ";
    }
    if (problems.size() >= 2) problems.resize(problems.size() - 2);
    return problems;
  };

  // Phase 1: every queue has its memory and ring. Nothing is registered yet, so a failure
  // here leaves the kernel untouched but still waiting for rings.
  std::string problems = await([](Queue::Phase p) { return p != Queue::Phase::Starting; });
  if (!problems.empty()) return fail("io_uring setup failed: " + problems);

  // Phase 2: every queue registers one entry. The kernel switches to the rings only when
  // every queue has one, so if any queue fails here the rings never became ready and the
  // kernel can still go back to /dev/fuse.
  for (auto& q : queues_) {
    std::lock_guard lk(q->mu_);
    q->cmd_ = Queue::Command::Go;
    q->cv_.notify_all();
  }
  problems = await([](Queue::Phase p) {
    return p == Queue::Phase::Registered || p == Queue::Phase::RegisterFailed;
  });
  if (!problems.empty()) return fail("io_uring registration failed: " + problems);

  rings_active_.store(true);
  LOG_INFO("FUSE over io_uring: %u queues (one per CPU), %u entries each, %zu KiB payload per "
           "entry; FORGET and INTERRUPT stay on /dev/fuse",
           nr, depth_, payload / 1024);
  if (idle_queues_) guard_ = std::thread([this] { guard_run(); });
  return classic_.start(error);
}

efuse::Status UringChannel::resume(std::string* error) {
  if (!session_.negotiated().has(k::init::kOverIoUring)) return classic_.resume(error);
  *error = "a connection that ran FUSE over io_uring cannot be resumed: the kernel drops "
           "the requests held by a dead ring's entries";
  return efuse::Errno{EOPNOTSUPP};
}

bool UringChannel::stop_for_restart(int timeout_ms) {
  stop_queues();  // none run when the connection can be resumed (see resume)
  return classic_.stop_for_restart(timeout_ms);
}

std::vector<int> UringChannel::device_fds() const {
  std::vector<int> out = classic_.device_fds();
  for (const auto& q : queues_)
    if (q->cmd_fd() >= 0) out.push_back(q->cmd_fd());
  return out;
}

bool UringChannel::stopped() const {
  for (const auto& q : queues_)
    if (q->running_.load()) return false;
  return classic_.stopped();
}

bool UringChannel::wait(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!stopped()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

void UringChannel::join() {
  for (auto& q : queues_)
    if (q->thread_.joinable()) q->thread_.join();
  stop_guard();
  classic_.join();
}

std::vector<const WorkerStats*> UringChannel::worker_stats() const {
  std::vector<const WorkerStats*> out;
  for (const auto& q : queues_) out.push_back(&q->stats_);
  for (const WorkerStats* w : classic_.worker_stats()) out.push_back(w);
  return out;
}

uint64_t UringChannel::channel_errors() const {
  return channel_errors_.load() + classic_.channel_errors();
}

}  // namespace fuse

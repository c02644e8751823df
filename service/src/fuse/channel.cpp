#include "fuse/channel.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/kernel.h"

namespace fuse {

// Page-aligned buffer memory: the backing file may be open with O_DIRECT, which wants
// aligned buffers for read(2)/write(2).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) { resize(size); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  void resize(size_t size) {
    std::free(data_);
    size_ = (size + kPage - 1) / kPage * kPage;
    data_ = static_cast<char*>(std::aligned_alloc(kPage, size_ + kPage));
    if (data_ == nullptr) throw std::bad_alloc();
  }
  char* data() const { return data_; }
  size_t size() const { return size_; }
  static constexpr size_t kPage = 4096;

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

// Requests are read so that a WRITE's data (after fuse_in_header and fuse_write_in) starts
// on a page boundary.
constexpr size_t kWriteDataOffset = sizeof(kernel::fuse_in_header) + sizeof(kernel::fuse_write_in);

class ClassicChannel::Worker final : public Transport {
 public:
  // `own`: a clone of the connection's fd for this worker alone; empty: it reads `fd`, the
  // connection's own.
  Worker(unsigned index, int fd, efuse::UniqueFd own, size_t bufsize, size_t scratch)
      : index_(index),
        own_(std::move(own)),
        fd_(own_ ? own_.get() : fd),
        in_(bufsize + AlignedBuffer::kPage),
        scratch_(scratch) {}
  char* in() const { return in_.data() + AlignedBuffer::kPage - kWriteDataOffset; }
  size_t in_size() const { return in_.size() - AlignedBuffer::kPage + kWriteDataOffset; }
  std::span<char> scratch() const { return {scratch_.data(), scratch_.size()}; }

  int send(const struct iovec* iov, int count) override {
    ssize_t n = ::writev(fd_, iov, count);
    return n < 0 ? -errno : 0;
  }

  const unsigned index_;
  efuse::UniqueFd own_;
  int fd_;
  std::atomic<bool> in_read_{false};  // blocked in read(): stop_for_restart may signal it
  std::atomic<bool> done_{true};      // no thread runs it (not started, or it left)
  WorkerStats stats_;
  AlignedBuffer in_;
  AlignedBuffer scratch_;
  std::thread thread_;        // under grow_mu_
  pthread_t handle_{};        // under grow_mu_: the running thread, for stop_for_restart
};

ClassicChannel::ClassicChannel(Session& session, Connection& conn, unsigned threads,
                               unsigned max_threads)
    : session_(session),
      conn_(conn),
      threads_(std::min(threads == 0 ? 1 : threads, kMaxWorkers)),
      policy_(threads_, std::min(std::max(threads_, max_threads), kMaxWorkers)) {
  session_.connect(conn_);
}

ClassicChannel::~ClassicChannel() {
  join();
  session_.shutdown();
}

static size_t scratch_size(const Session& s) { return s.request_buffer_size(); }

efuse::Status ClassicChannel::serve_init(std::string* error) {
  // The first worker uses the connection's own fd; it also answers INIT.
  {
    std::lock_guard lk(grow_mu_);
    workers_[0] = std::make_unique<Worker>(0, conn_.fd(), efuse::UniqueFd(),
                                           session_.request_buffer_size(), scratch_size(session_));
    count_.store(1, std::memory_order_release);
  }
  Worker& w = *workers_[0];
  while (!session_.initialized()) {
    ssize_t n = ::read(w.fd_, w.in(), w.in_size());
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      *error = std::string("reading INIT from /dev/fuse: ") + strerror(errno);
      return efuse::last_errno();
    }
    session_.handle(std::span<const char>(w.in(), static_cast<size_t>(n)), w, w.scratch());
    if (!session_.initialized()) {
      *error = "the kernel's INIT was refused (see the log)";
      return efuse::Errno{EPROTO};
    }
  }
  return {};
}

// A new worker's descriptor: its own clone, or (old kernels without cloning) the
// connection's fd, shared. Called under grow_mu_.
static efuse::Result<efuse::UniqueFd> worker_fd(const Connection& conn) {
  bool no_clone = false;
  auto fd = conn.clone(&no_clone);
  if (fd.ok() || !no_clone) return fd;
  static std::once_flag logged;
  std::call_once(logged, [&] {
    LOG_WARN("FUSE_DEV_IOC_CLONE failed (%s); workers share one /dev/fuse fd",
             strerror(fd.error()));
  });
  return efuse::UniqueFd();
}

efuse::Status ClassicChannel::start_worker(Worker& w, std::string* error) {
  running_.fetch_add(1);
  w.done_.store(false);
  try {
    w.thread_ = std::thread(&ClassicChannel::run, this, std::ref(w));
    w.handle_ = w.thread_.native_handle();
  } catch (const std::system_error& e) {
    w.done_.store(true);
    running_.fetch_sub(1);
    *error = std::string("cannot start a /dev/fuse worker: ") + e.what();
    return efuse::Errno{e.code().value() != 0 ? e.code().value() : EAGAIN};
  }
  return {};
}

efuse::Status ClassicChannel::start(std::string* error) {
  size_t bufsize = session_.request_buffer_size();
  std::lock_guard lk(grow_mu_);
  workers_[0]->in_.resize(bufsize + AlignedBuffer::kPage);
  workers_[0]->scratch_.resize(bufsize);
  for (unsigned i = count_.load(); i < threads_; ++i) {
    auto fd = worker_fd(conn_);
    if (!fd.ok()) {
      *error = std::string("cannot open /dev/fuse for a worker: ") + strerror(fd.error());
      return efuse::Errno{fd.error()};
    }
    workers_[i] = std::make_unique<Worker>(i, conn_.fd(), std::move(*fd), bufsize, bufsize);
    count_.store(i + 1, std::memory_order_release);
  }
  policy_.started(static_cast<int64_t>(monotonic_ns()));
  for (unsigned i = 0; i < threads_; ++i)
    if (efuse::Status s = start_worker(*workers_[i], error); !s.ok()) return s;
  return {};
}

bool ClassicChannel::grow(std::string* error) {
  std::lock_guard lk(grow_mu_);
  if (joining_ || draining_.load() || running_.load() >= policy_.max()) return false;
  const unsigned count = count_.load();
  Worker* w = nullptr;
  for (unsigned i = threads_; i < count && w == nullptr; ++i)
    if (workers_[i]->done_.load()) w = workers_[i].get();  // parked: its clone is kept
  if (w != nullptr) {
    if (w->thread_.joinable()) w->thread_.join();  // it has left its loop
  } else {
    if (count >= kMaxWorkers) return false;
    auto fd = worker_fd(conn_);
    if (!fd.ok()) {
      *error = std::string("cannot open /dev/fuse for a worker: ") + strerror(fd.error());
      return false;
    }
    size_t bufsize = session_.request_buffer_size();
    int own = fd->get();
    workers_[count] = std::make_unique<Worker>(count, conn_.fd(), std::move(*fd), bufsize, bufsize);
    count_.store(count + 1, std::memory_order_release);
    w = workers_[count].get();
    if (own >= 0 && fd_listener_) fd_listener_(own);
  }
  if (!start_worker(*w, error).ok()) return false;
  grown_.fetch_add(1, std::memory_order_relaxed);
  policy_.started(static_cast<int64_t>(monotonic_ns()));
  return true;
}

void ClassicChannel::run(Worker& w) {
  efuse::name_this_thread("efuse-dev%u", w.index_);
  bool retired = false;
  // Two clock reads per request: when it was read (also the end of the wait) and when the
  // session was done with it (also the start of the next wait).
  uint64_t t0 = monotonic_ns();
  for (;;) {
    w.in_read_.store(true);
    if (draining_.load()) break;
    ssize_t n = ::read(w.fd_, w.in(), w.in_size());
    w.in_read_.store(false);
    uint64_t t1 = monotonic_ns();
    w.stats_.wait_ns.fetch_add(t1 - t0, std::memory_order_relaxed);
    t0 = t1;
    if (n < 0) {
      int e = errno;
      // ENOENT: the request was interrupted before we read it; EINTR/EAGAIN: retry.
      if (e == EINTR || e == EAGAIN || e == ENOENT) continue;
      if (e != ENODEV) {
        channel_errors_.fetch_add(1, std::memory_order_relaxed);
        LOG_ERROR("reading /dev/fuse failed: %s; worker stops", strerror(e));
      }
      break;  // ENODEV: the connection is gone (unmounted or aborted)
    }
    unsigned busy = busy_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (policy_.took(busy, running_.load(std::memory_order_relaxed), static_cast<int64_t>(t1))) {
      // Every worker is busy: one more reads the next request while this one is served.
      std::string why;
      if (!grow(&why) && !why.empty()) {
        static std::once_flag logged;
        std::call_once(logged, [&] { LOG_WARN("cannot add a /dev/fuse worker: %s", why.c_str()); });
      }
    }
    w.stats_.in_flight.store(1, std::memory_order_relaxed);
    t0 = session_.handle(std::span<const char>(w.in(), static_cast<size_t>(n)), w, w.scratch(),
                         t1);
    w.stats_.in_flight.store(0, std::memory_order_relaxed);
    busy_.fetch_sub(1, std::memory_order_relaxed);
    w.stats_.requests.fetch_add(1, std::memory_order_relaxed);
    w.stats_.busy_ns.fetch_add(t0 - t1, std::memory_order_relaxed);
    // A worker beyond the first `threads_` leaves when the policy finds it idle.
    unsigned running = running_.load();
    if (w.index_ >= threads_ && running > threads_ &&
        policy_.finished(running, static_cast<int64_t>(t0)) &&
        running_.compare_exchange_strong(running, running - 1)) {
      retired = true;
      retired_.fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  w.in_read_.store(false);
  w.done_.store(true);
  if (!retired) running_.fetch_sub(1);
  running_.notify_all();
}

std::vector<const WorkerStats*> ClassicChannel::worker_stats() const {
  std::vector<const WorkerStats*> out;
  const unsigned count = count_.load(std::memory_order_acquire);
  for (unsigned i = 0; i < count; ++i) out.push_back(&workers_[i]->stats_);
  return out;
}

bool ClassicChannel::stopped() const { return running_.load() == 0; }

bool ClassicChannel::wait(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running_.load() != 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

efuse::Status ClassicChannel::resume(std::string* error) {
  {
    std::lock_guard lk(grow_mu_);
    if (count_.load() != 0) return efuse::Errno{EALREADY};
    size_t bufsize = session_.request_buffer_size();
    workers_[0] = std::make_unique<Worker>(0, conn_.fd(), efuse::UniqueFd(), bufsize, bufsize);
    count_.store(1, std::memory_order_release);
  }
  return start(error);
}

namespace {
// Interrupts a worker's read() of /dev/fuse (EINTR) and does nothing else.
void wake_handler(int) {}
std::once_flag g_wake_once;
}  // namespace

bool ClassicChannel::stop_for_restart(int timeout_ms) {
  std::call_once(g_wake_once, [] {
    struct sigaction sa {};
    sa.sa_handler = wake_handler;  // no SA_RESTART: read() returns EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(kWakeSignal, &sa, nullptr);
  });
  draining_.store(true);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running_.load() != 0) {
    // A worker between its check of draining_ and read() misses this signal: it gets the
    // next one. One handling a request stops after replying.
    {
      std::lock_guard lk(grow_mu_);
      const unsigned count = count_.load();
      for (unsigned i = 0; i < count; ++i) {
        Worker& w = *workers_[i];
        if (!w.done_.load() && w.in_read_.load() && w.thread_.joinable())
          pthread_kill(w.handle_, kWakeSignal);
      }
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  join();
  return true;
}

std::vector<int> ClassicChannel::device_fds() const {
  std::vector<int> out{conn_.fd()};
  std::lock_guard lk(grow_mu_);
  const unsigned count = count_.load();
  for (unsigned i = 0; i < count; ++i)
    if (workers_[i]->own_) out.push_back(workers_[i]->own_.get());
  return out;
}

void ClassicChannel::set_device_fd_listener(std::function<void(int)> fn) {
  std::lock_guard lk(grow_mu_);
  fd_listener_ = std::move(fn);
}

WorkerCount ClassicChannel::worker_count() const {
  return {running_.load(), policy_.min(), policy_.max(), grown_.load(), retired_.load()};
}

void ClassicChannel::set_max_workers(unsigned max) {
  policy_.set_limits(threads_, std::min(std::max(max, threads_), kMaxWorkers));
}

void ClassicChannel::join() {
  // Workers may still be growing the channel: no more start, then the threads are joined
  // outside the lock (a worker that wants to grow waits for it).
  std::vector<std::thread> threads;
  {
    std::lock_guard lk(grow_mu_);
    joining_ = true;
    const unsigned count = count_.load();
    for (unsigned i = 0; i < count; ++i)
      if (workers_[i]->thread_.joinable()) threads.push_back(std::move(workers_[i]->thread_));
  }
  for (auto& t : threads) t.join();
}

}  // namespace fuse

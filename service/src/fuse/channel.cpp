#include "fuse/channel.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
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
  Worker(int fd, efuse::UniqueFd own, size_t bufsize, size_t scratch)
      : own_(std::move(own)),
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

  efuse::UniqueFd own_;
  int fd_;
  std::atomic<bool> in_read_{false};  // blocked in read(): stop_for_restart may signal it
  std::atomic<bool> done_{false};
  WorkerStats stats_;
  AlignedBuffer in_;
  AlignedBuffer scratch_;
  std::thread thread_;
};

ClassicChannel::ClassicChannel(Session& session, Connection& conn, unsigned threads)
    : session_(session), conn_(conn), threads_(threads == 0 ? 1 : threads) {
  session_.connect(conn_);
}

ClassicChannel::~ClassicChannel() {
  join();
  session_.shutdown();
}

static size_t scratch_size(const Session& s) { return s.request_buffer_size(); }

efuse::Status ClassicChannel::serve_init(std::string* error) {
  // The first worker uses the connection's own fd; it also answers INIT.
  workers_.push_back(std::make_unique<Worker>(conn_.fd(), efuse::UniqueFd(),
                                              session_.request_buffer_size(),
                                              scratch_size(session_)));
  Worker& w = *workers_.front();
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

efuse::Status ClassicChannel::start(std::string* error) {
  size_t bufsize = session_.request_buffer_size();
  workers_.front()->in_.resize(bufsize + AlignedBuffer::kPage);
  workers_.front()->scratch_.resize(bufsize);
  for (unsigned i = 1; i < threads_; ++i) {
    bool no_clone = false;
    auto fd = conn_.clone(&no_clone);
    if (!fd.ok() && !no_clone) {
      *error = std::string("cannot open /dev/fuse for a worker: ") + strerror(fd.error());
      return efuse::Errno{fd.error()};
    }
    if (!fd.ok()) {
      // Old kernels without cloning: every worker shares the original fd.
      LOG_WARN("FUSE_DEV_IOC_CLONE failed (%s); workers share one /dev/fuse fd",
               strerror(fd.error()));
      workers_.push_back(std::make_unique<Worker>(conn_.fd(), efuse::UniqueFd(), bufsize, bufsize));
      continue;
    }
    workers_.push_back(std::make_unique<Worker>(conn_.fd(), std::move(*fd), bufsize, bufsize));
  }
  running_.store(static_cast<unsigned>(workers_.size()));
  for (auto& w : workers_) w->thread_ = std::thread(&ClassicChannel::run, this, std::ref(*w));
  return {};
}

void ClassicChannel::run(Worker& w) {
  unsigned index = 0;
  while (index < workers_.size() && workers_[index].get() != &w) ++index;
  efuse::name_this_thread("efuse-dev%u", index);
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
    w.stats_.in_flight.store(1, std::memory_order_relaxed);
    t0 = session_.handle(std::span<const char>(w.in(), static_cast<size_t>(n)), w, w.scratch(),
                         t1);
    w.stats_.in_flight.store(0, std::memory_order_relaxed);
    w.stats_.requests.fetch_add(1, std::memory_order_relaxed);
    w.stats_.busy_ns.fetch_add(t0 - t1, std::memory_order_relaxed);
  }
  w.in_read_.store(false);
  w.done_.store(true);
  running_.fetch_sub(1);
  running_.notify_all();
}

std::vector<const WorkerStats*> ClassicChannel::worker_stats() const {
  std::vector<const WorkerStats*> out;
  for (const auto& w : workers_) out.push_back(&w->stats_);
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
  if (!workers_.empty()) return efuse::Errno{EALREADY};
  size_t bufsize = session_.request_buffer_size();
  workers_.push_back(std::make_unique<Worker>(conn_.fd(), efuse::UniqueFd(), bufsize, bufsize));
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
    for (auto& w : workers_)
      if (!w->done_.load() && w->in_read_.load() && w->thread_.joinable())
        pthread_kill(w->thread_.native_handle(), kWakeSignal);
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  join();
  return true;
}

std::vector<int> ClassicChannel::device_fds() const {
  std::vector<int> out{conn_.fd()};
  for (const auto& w : workers_)
    if (w->own_) out.push_back(w->own_.get());
  return out;
}

void ClassicChannel::join() {
  for (auto& w : workers_)
    if (w->thread_.joinable()) w->thread_.join();
}

}  // namespace fuse

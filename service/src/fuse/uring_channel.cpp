#include "fuse/uring_channel.h"

#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/opcodes.h"

namespace fuse {

namespace k = kernel;

// ---- pure helpers ----------------------------------------------------------------------

namespace uring {

std::optional<std::vector<unsigned>> parse_cpu_list(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  std::vector<unsigned> cpus;
  if (text.empty()) return cpus;
  auto number = [](std::string_view s, unsigned* out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    if (comma != std::string_view::npos && text.empty()) return std::nullopt;  // "0,"
    size_t dash = item.find('-');
    unsigned lo = 0, hi = 0;
    if (dash == std::string_view::npos) {
      if (!number(item, &lo)) return std::nullopt;
      hi = lo;
    } else if (!number(item.substr(0, dash), &lo) || !number(item.substr(dash + 1), &hi) ||
               hi < lo || hi - lo > 65535) {
      return std::nullopt;
    }
    for (unsigned c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

unsigned possible_cpus() {
  std::ifstream f("/sys/devices/system/cpu/possible");
  std::string line;
  if (f && std::getline(f, line)) {
    auto cpus = parse_cpu_list(line);
    if (cpus && !cpus->empty()) return static_cast<unsigned>(cpus->size());
  }
  int n = get_nprocs_conf();
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

size_t payload_size(uint32_t max_write, uint16_t max_pages, size_t page_size) {
  size_t n = std::max<size_t>(k::kMinReadBufferKernel, max_write);
  return std::max<size_t>(n, static_cast<size_t>(max_pages) * page_size);
}

std::unique_ptr<EntryBuffer> EntryBuffer::create(size_t payload_capacity, int* err) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t cap = (payload_capacity + page - 1) / page * page;
  size_t size = kPrefix + cap;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    *err = errno;
    return nullptr;
  }
  return std::unique_ptr<EntryBuffer>(new EntryBuffer(static_cast<char*>(p), size, cap));
}

EntryBuffer::EntryBuffer(char* base, size_t map_size, size_t capacity)
    : base_(base), map_size_(map_size), capacity_(capacity) {
  static_assert(sizeof(k::fuse_uring_req_header) + sizeof(k::fuse_in_header) +
                    k::kUringHeaderArea <= kPrefix,
                "the reassembled request must not overlap the ring header");
  iov_[0] = {base_, sizeof(k::fuse_uring_req_header)};
  iov_[1] = {base_ + kPrefix, capacity_};
}

EntryBuffer::~EntryBuffer() { munmap(base_, map_size_); }

uint64_t EntryBuffer::commit_id() const {
  const auto* h = reinterpret_cast<const k::fuse_uring_req_header*>(base_);
  return h->ring_ent_in_out.commit_id;
}

uint32_t EntryBuffer::request_payload_size() const {
  const auto* h = reinterpret_cast<const k::fuse_uring_req_header*>(base_);
  return h->ring_ent_in_out.payload_sz;
}

std::span<const char> EntryBuffer::assemble_request(const char** why) {
  auto* h = header();
  k::fuse_in_header in;
  std::memcpy(&in, h->in_out, sizeof in);
  size_t payload_len = h->ring_ent_in_out.payload_sz;
  if (payload_len > capacity_) {
    *why = "payload_sz exceeds the payload buffer";
    return {};
  }
  if (in.len < sizeof in + payload_len) {
    *why = "in_header.len is shorter than the header plus payload";
    return {};
  }
  size_t op_len = in.len - sizeof in - payload_len;
  if (op_len > k::kUringHeaderArea) {
    *why = "in_header.len leaves more than op_in can hold";
    return {};
  }
  char* start = payload() - (op_len + sizeof in);
  std::memcpy(start, &in, sizeof in);
  std::memcpy(start + sizeof in, h->op_in, op_len);
  return {start, in.len};
}

int EntryBuffer::encode_reply(const struct iovec* iov, int count) {
  auto* h = header();
  k::fuse_out_header oh{};
  if (count >= 1 && iov[0].iov_len == sizeof oh) std::memcpy(&oh, iov[0].iov_base, sizeof oh);
  size_t total = 0;
  for (int i = 1; i < count; ++i) total += iov[i].iov_len;
  if (count < 1 || iov[0].iov_len != sizeof oh || total > capacity_) {
    oh.len = sizeof oh;
    oh.error = -EIO;
    std::memcpy(h->in_out, &oh, sizeof oh);
    h->ring_ent_in_out.payload_sz = 0;
    return -EOVERFLOW;
  }
  char* dst = payload();
  auto inside = [&](const struct iovec& v) {
    const char* s = static_cast<const char*>(v.iov_base);
    return v.iov_len != 0 && s < dst + capacity_ && s + v.iov_len > dst;
  };
  int pieces = count - 1;
  bool any_inside = false;
  for (int i = 1; i < count; ++i) any_inside |= inside(iov[i]);
  if (pieces == 1 || !any_inside) {
    size_t off = 0;
    for (int i = 1; i < count; ++i) {
      if (iov[i].iov_len == 0) continue;
      if (iov[i].iov_base != dst + off) std::memmove(dst + off, iov[i].iov_base, iov[i].iov_len);
      off += iov[i].iov_len;
    }
  } else {
    // Several pieces, some already in the payload buffer: gather through a copy so no
    // piece is overwritten before it is read. Not a path Session takes today.
    std::vector<char> tmp(total);
    size_t off = 0;
    for (int i = 1; i < count; ++i) {
      if (iov[i].iov_len == 0) continue;
      std::memcpy(tmp.data() + off, iov[i].iov_base, iov[i].iov_len);
      off += iov[i].iov_len;
    }
    std::memcpy(dst, tmp.data(), total);
  }
  std::memcpy(h->in_out, &oh, sizeof oh);
  h->ring_ent_in_out.payload_sz = static_cast<uint32_t>(total);
  return 0;
}

}  // namespace uring

// ---- kernel checks --------------------------------------------------------------------

namespace {

// "Read-only file system (EROFS)": the text and the name, so a log line says exactly what the
// kernel answered.
std::string errno_str(int err) {
  std::string s = strerror(err);
  if (const char* name = strerrorname_np(err)) s += std::string(" (") + name + ")";
  return s;
}

// The first byte of a sysfs file: 0, or the errno of what failed (*step: "opening" or
// "reading"; EIO when the file is empty).
int read_first_byte(const char* path, char* out, const char** step) {
  *step = "opening";
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  *step = "reading";
  ssize_t n = ::read(fd, out, 1);
  int err = n == 1 ? 0 : n < 0 ? errno : EIO;
  ::close(fd);
  return err;
}

// Whether a seccomp filter is active for this process (systemd-nspawn's default filter,
// a unit's SystemCallFilter=): it may refuse io_uring_setup whatever our capabilities.
bool seccomp_filtered() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Seccomp:", 0) == 0) return line.find('2') != std::string::npos;
  return false;
}

// What the enable_uring parameter said, for the log of a fallback: "" when it was Y (or
// efused turned it on), else the state or the error in words.
std::string enable_uring_state() {
  char v = 0;
  const char* step = nullptr;
  int err = read_first_byte(k::kEnableUringParam, &v, &step);
  if (err != 0)
    return std::string(step) + " " + k::kEnableUringParam + " failed: " + errno_str(err);
  if (v == 'Y' || v == 'y' || v == '1') return "";
  return std::string(k::kEnableUringParam) + " is " + v;
}

}  // namespace

// ---- queues ------------------------------------------------------------------------------

namespace {

constexpr uint64_t kEventTag = 1;     // user_data of the eventfd read; entries are pointers
constexpr uint64_t kSentinelTag = 2;  // user_data of the exit sentinel's poll
constexpr int kStartTimeoutMs = 10000;

thread_local const void* t_current_queue = nullptr;

// Ring commands name their /dev/fuse fd directly, never as a registered (fixed) file: see
// "Dying without a goodbye" at UringChannel::Queue.
void prep_uring_cmd(struct io_uring_sqe* sqe, int fd, k::UringCmd cmd, uint16_t qid,
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

bool is_teardown_error(int err) {
  return err == ENOTCONN || err == ECANCELED || err == ECONNABORTED || err == ENODEV;
}

// Opcodes that take no reply; they come over /dev/fuse, never over a ring, but an entry
// must not stay parked forever if one ever did.
bool takes_no_reply(uint32_t opcode) {
  auto op = static_cast<k::Opcode>(opcode);
  return op == k::Opcode::Forget || op == k::Opcode::BatchForget ||
         op == k::Opcode::Interrupt || op == k::Opcode::NotifyReply;
}

}  // namespace

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

  Queue(UringChannel& ch, unsigned qid, unsigned depth, size_t payload, int evfd)
      : ch_(ch), qid_(qid), depth_(depth), payload_(payload), evfd_(evfd) {}
  ~Queue() {
    if (thread_.joinable()) thread_.join();
    if (evfd_ >= 0) ::close(evfd_);

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
    ssize_t n = ::write(evfd_, &one, sizeof one);
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
  int evfd_;
  std::thread thread_;
  WorkerStats stats_;
  std::atomic<bool> running_{true};
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
};

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
  // with that next request. Waited-for requests are served as soon as before.
  struct sched_param batch {};
  rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
  if (rc != 0)
    LOG_INFO("io_uring queue %u: cannot make its thread SCHED_BATCH (%s)", qid_, strerror(rc));

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
  io_uring_prep_read(s, evfd_, &event_value_, sizeof event_value_, 0);
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
  uint64_t t0 = monotonic_ns();
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
    ch_.session_.handle(request, e, scratch);
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
  stats_.busy_ns.fetch_add(monotonic_ns() - t0, std::memory_order_relaxed);
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
    if (stop_.load()) break;
    if (in_kernel_ == 0 && conn_dead_) break;
    uint64_t t0 = monotonic_ns();
    int rc = io_uring_submit_and_wait(&ring_, 1);
    stats_.wait_ns.fetch_add(monotonic_ns() - t0, std::memory_order_relaxed);
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

// ---- channel -----------------------------------------------------------------------------

UringChannel::UringChannel(Session& session, Connection& conn, unsigned queue_depth,
                           unsigned classic_threads)
    : session_(session),
      conn_(conn),
      depth_(queue_depth == 0 ? 1 : queue_depth),
      classic_(session, conn, classic_threads) {}

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

  unsigned nr = uring::possible_cpus();
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
    int evfd = eventfd(0, EFD_CLOEXEC);
    if (evfd < 0) return fail(std::string("eventfd: ") + strerror(errno));
    queues_.push_back(std::make_unique<Queue>(*this, qid, depth_, payload, evfd));
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
  return classic_.start(error);
}

efuse::Status UringChannel::drop_kernel_uring(int dev_fd, std::string* why) {
  struct io_uring ring {};
  struct io_uring_params p {};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &p);
  if (rc < 0) {
    *why = std::string("io_uring_setup failed: ") + strerror(-rc);
    return efuse::Errno{-rc};
  }
  // A REGISTER naming a queue that cannot exist: the kernel answers EINVAL and, as for any
  // failed registration, stops waiting for rings (fc->io_uring = 0).
  struct io_uring_sqe* s = io_uring_get_sqe(&ring);
  if (s == nullptr) {
    io_uring_queue_exit(&ring);
    *why = "no SQE on a fresh io_uring";
    return efuse::Errno{EIO};
  }
  prep_uring_cmd(s, dev_fd, k::UringCmd::Register, 0xffff, 0, 0);
  LOG_INFO("asking the kernel to serve this FUSE connection over /dev/fuse (a deliberately "
           "invalid io_uring REGISTER; the kernel may log 'Invalid ring qid 65535')");
  rc = io_uring_submit_and_wait(&ring, 1);
  int res = 0;
  struct io_uring_cqe* cqe = nullptr;
  if (rc >= 0 && io_uring_peek_cqe(&ring, &cqe) == 0 && cqe != nullptr) {
    res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
  } else {
    res = rc < 0 ? rc : -EIO;
  }
  io_uring_queue_exit(&ring);
  if (res == -EINVAL || res == -EOPNOTSUPP) return {};  // dropped / io_uring already off
  *why = res == 0 ? std::string("the kernel accepted an invalid REGISTER")
                  : std::string("REGISTER answered ") + strerror(-res);
  return efuse::Errno{res < 0 ? -res : EIO};
}

efuse::Status UringChannel::supported(std::string* why) {
  const char* param = k::kEnableUringParam;
  char v = 0;
  const char* step = nullptr;
  int err = read_first_byte(param, &v, &step);
  if (err == ENOENT && access("/sys/module/fuse", F_OK) != 0 && access("/sys/module", F_OK) == 0) {
    // FUSE built as a module that is not loaded yet: opening /dev/fuse loads it.
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
    err = read_first_byte(param, &v, &step);
  }
  if (err == ENOENT && access("/sys/module/fuse/parameters", F_OK) == 0) {
    // The fuse module's parameter directory is there, without enable_uring: a kernel built
    // without it.
    *why = std::string("this kernel's FUSE has no io_uring support (") + param +
           " does not exist; FUSE over io_uring needs Linux 6.14 or later built with "
           "CONFIG_FUSE_IO_URING)";
    return efuse::Errno{EOPNOTSUPP};
  }
  if (err != 0) {
    // Cannot check (a container's /sys without module/, or a read error): the kernel still
    // decides at INIT, and start() falls back to /dev/fuse if it does not offer io_uring.
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      std::string hint;
      if (err == ENOENT)
        hint = access("/sys/module", F_OK) != 0
                   ? "; /sys/module is not visible here (a container? bind the host's "
                     "read-only, e.g. systemd-nspawn --bind-ro=/sys/module)"
                   : "; /sys/module/fuse does not exist (no FUSE in this kernel, or a "
                     "container's /sys without the host's modules)";
      LOG_INFO("cannot check whether FUSE may use io_uring: %s %s failed: %s%s; asking the "
               "kernel at INIT", step, param, errno_str(err).c_str(), hint.c_str());
    }
  } else if (v != 'Y' && v != 'y' && v != '1') {
    if (geteuid() != 0) {
      *why = std::string("FUSE over io_uring is off (") + param + " is " + v +
             ") and only root can turn it on (echo Y > " + param + ")";
      return efuse::Errno{EPERM};
    }
    const char* what = "opening it for writing";
    int fd = ::open(param, O_WRONLY | O_CLOEXEC);
    err = fd < 0 ? errno : 0;
    if (fd >= 0) {
      what = "writing Y to it";
      ssize_t n = ::write(fd, "Y", 1);
      err = n == 1 ? 0 : n < 0 ? errno : EIO;
      ::close(fd);
    }
    if (err != 0) {
      *why = std::string("FUSE over io_uring is off (") + param + " is " + v +
             ") and efused cannot turn it on: " + what + " failed: " + errno_str(err);
      if (err == EROFS)
        *why += "; /sys is read-only here (a container?): turn it on where /sys is writable, "
                "e.g. on the host: echo Y > " + std::string(param);
      return efuse::Errno{err};
    }
    LOG_INFO("FUSE over io_uring was off; efused turned it on (wrote Y to %s)", param);
  }
  struct io_uring ring {};
  struct io_uring_params p {};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &p);
  if (rc < 0) {
    *why = std::string("io_uring_setup with 128-byte SQEs failed: ") + errno_str(-rc);
    std::ifstream f("/proc/sys/kernel/io_uring_disabled");
    int disabled = 0;
    if (f >> disabled && disabled != 0)
      *why += " (kernel.io_uring_disabled = " + std::to_string(disabled) + ")";
    else if (rc == -EPERM && seccomp_filtered())
      *why += " (a seccomp filter is active, e.g. systemd-nspawn's default or SystemCallFilter=: "
              "allow io_uring_setup, io_uring_enter and io_uring_register)";
    return efuse::Errno{-rc};
  }
  io_uring_queue_exit(&ring);
  return {};
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

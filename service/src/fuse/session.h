// Session: decodes FUSE requests, calls the Filesystem, encodes exactly one reply.
//
// Transport-agnostic: channels (classic /dev/fuse workers, io_uring queues) hand it a
// request buffer and a Transport to reply through; what is connection-wide (backing ids,
// notifications) goes through the Connection the channel connects it to. Thread-safe: many
// workers call handle() concurrently.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "accel/offload.h"
#include "common/slot_file.h"
#include "fuse/offload_pool.h"
#include "fs/filesystem.h"
#include "fuse/connection.h"
#include "fuse/kernel.h"
#include "fuse/reply.h"
#include "fuse/stats.h"

namespace fuse {

class KernelAnswers;

struct SessionOptions {
  double negative_timeout = 1.0;  // how long the kernel may cache "no such name"
  // Module tier: how long a STATFS reply is answered in the kernel (0: never).
  double statfs_timeout = 1.0;
  bool writeback_cache = false;
  bool passthrough = true;     // ask for FUSE passthrough when the kernel offers it
  bool io_uring = false;       // ask for FUSE-over-io_uring when the kernel offers it
  // Ask for FUSE_POSIX_ACL: the kernel then checks POSIX ACLs (not only mode bits) and
  // applies default ACLs. The kernel turns default_permissions on with it, so only ask
  // when the mount has default_permissions anyway.
  bool posix_acl = false;
  // Serve GETXATTR, SETXATTR, LISTXATTR and REMOVEXATTR. false answers them ENOSYS, which
  // makes the kernel stop sending each of them for the connection (and report ENOTSUP);
  // posix_acl must then be false too.
  bool xattr = true;
  // INIT flags treated as not offered by the kernel (EFUSE_MASK_KERNEL_FEATURES: debugging,
  // or to keep a feature the kernel gets wrong out of use).
  uint64_t masked_flags = 0;
  uint32_t max_write = 1u << 20;
  uint16_t max_background = 64;
  // Starts a thread for deferred work (a blocking lock wait, a thread of the offload pool);
  // empty: a detached std::thread. May throw (std::system_error, std::bad_alloc) when no
  // thread can start: a lock wait is then answered ENOLCK, an offloaded request served
  // inline. Tests inject that failure here.
  std::function<void(std::function<void()>)> start_thread;
  // Queue balancing of requests that may block (accel/offload.h); false serves them all
  // inline, on the thread that read them (EFUSE_QUEUE_BALANCING=0: comparisons, bench).
  bool queue_balancing = true;
  // The offload pool's bounds (fuse/offload_pool.h; mounts.yaml offload_threads,
  // offload_queue); live through set_offload_limits().
  unsigned offload_threads = OffloadPool::kDefaultThreads;
  size_t offload_queue = OffloadPool::kDefaultQueued;
};

// What INIT settled.
struct Negotiated {
  uint32_t major = 0;
  uint32_t minor = 0;
  uint32_t max_readahead = 0;
  uint32_t max_write = 0;
  uint16_t max_pages = 0;
  uint64_t kernel_flags = 0;  // what the kernel offered
  uint64_t flags = 0;         // what we accepted
  bool has(uint64_t f) const { return (flags & f) != 0; }
};

class Session {
 public:
  Session(efuse::fs::Filesystem& fs, SessionOptions opts);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The connection this session serves: backing ids and notifications go through it. Set
  // once, by the channel, before the first request; must outlive shutdown().
  void connect(Connection& conn) { conn_ = &conn; }

  // Handles one request (as read from the device). `scratch` is a per-worker buffer of at
  // least max_write + 4096 bytes used for read and readdir replies. `start_ns` is when the
  // channel got the request (monotonic_ns(); 0: read here). Returns monotonic_ns() when it
  // was done, so a channel times its wait and busy periods with the session's clock reads
  // instead of its own (a clock read costs about 60 ns on these VMs, and a warm `cat` makes
  // three requests).
  uint64_t handle(std::span<const char> request, Transport& out, std::span<char> scratch,
                  uint64_t start_ns = 0) noexcept;

  bool initialized() const { return initialized_.load(std::memory_order_acquire); }
  bool destroyed() const { return destroyed_.load(std::memory_order_acquire); }
  const Negotiated& negotiated() const { return negotiated_; }
  uint64_t masked_flags() const { return opts_.masked_flags; }
  // Size of buffer a channel must read requests into.
  size_t request_buffer_size() const;
  // Live policy change (config reload).
  void set_negative_timeout(double seconds) { negative_timeout_.store(seconds); }
  void set_statfs_timeout(double seconds) { statfs_timeout_.store(seconds); }
  // Kernel module tier: a RELEASE the module's RELEASE handler took over (kmod patch 0015),
  // carried out as the request would be (thread-safe; called by the handler set's reader).
  void released_in_kernel(uint64_t nodeid, uint64_t fh, uint32_t flags, uint32_t release_flags);
  uint64_t kernel_releases() const { return kernel_releases_.load(std::memory_order_relaxed); }
  // The kernel module tier: answers its eBPF handlers give from maps this session keeps
  // exact (fuse/kernel_answers.h). Set before the first request, or null; must outlive the
  // requests in flight.
  void set_kernel_answers(KernelAnswers* answers) { answers_.store(answers); }

  // FUSE notifications (unique 0). Send them from a thread of their own, never from a
  // request handler. Return 0, or -errno (-ENOENT: the kernel no longer knows the object;
  // -ENOTCONN before INIT or without a connection). Any other failure is counted per kind
  // (invalidation_failures) and logged once per kind.
  int notify_inval_inode(uint64_t nodeid, int64_t off, int64_t len);
  // expire_only: FUSE_EXPIRE_ONLY where the kernel speaks 7.38 (else a plain invalidation).
  int notify_inval_entry(uint64_t parent, std::string_view name, bool expire_only = false);
  uint64_t notifications() const { return notifications_.load(); }
  enum class InvalKind { Inode, Entry };
  // Invalidations the kernel did not take (efuse_invalidation_failures_total{kind}).
  uint64_t invalidation_failures(InvalKind kind) const {
    return inval_failures_[static_cast<size_t>(kind)].load();
  }

  // Stops blocking-lock waiters (their deferred replies answer EINTR) and closes backing
  // ids; call before the transports and the connection go away. A second call does nothing.
  void shutdown();

  // Restart without remounting (common/slot_file.h). record_state: INIT's outcome and the
  // passthrough backing ids are kept current in `file` from now on. restore_state: a
  // connection a previous efused served: takes INIT's outcome (no INIT comes) and the
  // backing ids, which live on in the kernel, from `file`, tells the backend (init) and
  // goes on recording; false with *why when the state does not add up. keep_for_restart:
  // shutdown() leaves the backing ids registered, for the next efused.
  void record_state(efuse::SlotFile* file);
  efuse::Status restore_state(efuse::SlotFile* file, std::string* why);
  void keep_for_restart() { keep_for_restart_ = true; }

  const SessionStats& stats() const { return stats_; }
  uint64_t decode_errors() const { return decode_errors_.load(); }
  uint64_t passthrough_opens() const { return passthrough_opens_.load(); }
  // Nodes with a handle held for opens answered in the kernel (session_kernel_opens.cpp).
  uint64_t kernel_open_holds() const { return kernel_open_holds_.load(); }
  uint64_t passthrough_refusals() const { return passthrough_refusals_.load(); }
  // Requests whose DeferredReply has not answered yet.
  uint64_t deferred() const { return deferred_.load(); }
  // Queue balancing of requests that may block (accel/offload.h): settings (live) and what
  // it decided.
  void set_adaptive(const efuse::accel::Settings& s) { offload_.set_settings(s); }
  efuse::accel::OffloadReport offload_report() const { return offload_.report(); }
  OffloadPool::Stats offload_pool_stats() const { return pool_.stats(); }
  void set_offload_limits(unsigned threads, size_t queued) { pool_.set_limits(threads, queued); }

 private:
  friend class DeferredReply;
  struct Request;
  using Handler = void (Session::*)(Request&);
  static const std::array<Handler, kernel::kMaxOpcode + 1> kHandlers;

  void dispatch(Request& r);
  void malformed(Request& r);
  void do_init(Request& r);
  void do_destroy(Request& r);
  void do_interrupt(Request& r);
  void do_lookup(Request& r);
  void do_forget(Request& r);
  void do_batch_forget(Request& r);
  void do_getattr(Request& r);
  void do_setattr(Request& r);
  void do_readlink(Request& r);
  void do_symlink(Request& r);
  void do_mknod(Request& r);
  void do_mkdir(Request& r);
  void do_unlink(Request& r);
  void do_rmdir(Request& r);
  void do_rename(Request& r);
  void do_rename2(Request& r);
  void do_link(Request& r);
  void do_open(Request& r);
  void do_create(Request& r);
  void do_read(Request& r);
  void do_write(Request& r);
  void do_flush(Request& r);
  void do_release(Request& r);
  void do_fsync(Request& r);
  void do_opendir(Request& r);
  void do_readdir(Request& r);
  void do_readdirplus(Request& r);
  void do_releasedir(Request& r);
  void do_fsyncdir(Request& r);
  void do_statfs(Request& r);
  void do_access(Request& r);
  void do_setxattr(Request& r);
  void do_getxattr(Request& r);
  void do_listxattr(Request& r);
  void do_removexattr(Request& r);
  void do_fallocate(Request& r);
  void do_lseek(Request& r);
  void do_copy_file_range(Request& r);
  void do_getlk(Request& r);
  void do_setlk(Request& r);
  void do_setlkw(Request& r);

  void readdir_common(Request& r, bool plus);
  // session_answers.cpp: the KernelAnswers side of a request (before its reply is sent).
  uint64_t answers_begin(uint32_t opcode);
  void answers_before(Request& r) noexcept;  // before the backend is asked
  void keep_answers(Request& r, const struct iovec* payload, int n, int err) noexcept;
  void restore_dir_attr(Request& r, KernelAnswers& a, uint64_t dir);  // in keep_answers
  // RELEASE: the handle and backing id of the open go (an fh of the module's: the handle
  // held for its flock, if any).
  efuse::Status release_open(const efuse::fs::Context& ctx, uint64_t nodeid, uint64_t kernel_fh,
                             uint32_t release_flags);
  void reply_entry(Request& r, const efuse::fs::Entry& e);
  void reply_attr(Request& r, const efuse::fs::Attr& a);
  static kernel::fuse_attr_out attr_out(const efuse::fs::Attr& a);
  void reply_open(Request& r, const efuse::fs::OpenInfo& info, bool dir);
  void fill_open_out(kernel::fuse_open_out* out, const efuse::fs::OpenInfo& info, bool dir,
                     uint64_t nodeid);
  void backing_released(uint64_t fh);
  void close_backing_ids();
  // session_kernel_opens.cpp: opens answered by efuse.ko's OPEN handler (kmod patch 0012).
  bool hold_for_kernel_opens(const efuse::fs::Context& ctx, uint64_t nodeid, int32_t backing_id);
  uint64_t own_fh(const efuse::fs::Context& ctx, uint64_t nodeid, uint64_t fh);
  uint64_t flock_fh(const efuse::fs::Context& ctx, uint64_t nodeid, uint64_t fh);
  std::optional<uint64_t> released_kernel_fh(uint64_t fh);
  void node_forgotten(uint64_t nodeid);
  void release_kernel_opens();
  bool kernel_fh(uint64_t fh) const;
  using Clock = std::chrono::steady_clock;
  void wait_for_lock(Request& r, const kernel::fuse_lk_in& in, Clock::time_point give_up);
  struct LockWait;
  int lock_waiter(const efuse::fs::Context& ctx, uint64_t nodeid, uint64_t fh, uint64_t owner,
                  efuse::fs::Lock lock, bool flock, Clock::time_point give_up);
  DeferredReply defer(Request& r);
  // What a request that may block answers: an errno, or (err 0) a body of `len` bytes.
  struct BlockingAnswer {
    int err = 0;
    size_t len = 0;
    alignas(8) std::array<char, 160> body{};
    static BlockingAnswer error(int e) {
      BlockingAnswer a;
      a.err = e;
      return a;
    }
    template <class T>
    static BlockingAnswer of(const T& v) {
      static_assert(sizeof v <= sizeof body);
      BlockingAnswer a;
      std::memcpy(a.body.data(), &v, sizeof v);
      a.len = sizeof v;
      return a;
    }
  };
  // Serves a request that may block: `op` (which must own copies of what it reads from the
  // request) computes its answer, inline or on the offload pool, as offload_ decides
  // (session_blocking.cpp).
  void serve_blocking(Request& r, efuse::accel::Blocking kind, std::function<BlockingAnswer()> op);
  // A DeferredReply answered: records the request's real latency and errno.
  void deferred_answered(uint32_t opcode, uint64_t start_ns, int err);
  efuse::Status try_flock(const efuse::fs::Context& ctx, uint64_t nodeid, uint64_t fh,
                          uint32_t type);
  void flock_closed(uint64_t nodeid, uint64_t fh, bool released);
  void lock_asked(uint64_t nodeid);
  using FlockHolders = std::map<std::pair<uint64_t, uint64_t>, bool>;
  std::ranges::subrange<FlockHolders::iterator> holders_of(uint64_t nodeid);
  bool closing_holder(uint64_t nodeid, uint64_t fh);

  efuse::fs::Filesystem& fs_;
  SessionOptions opts_;
  std::atomic<KernelAnswers*> answers_{nullptr};
  Connection* conn_ = nullptr;
  std::atomic<double> negative_timeout_;
  std::atomic<double> statfs_timeout_;
  std::atomic<uint64_t> kernel_releases_{0};  // released_in_kernel calls
  Negotiated negotiated_;
  std::atomic<bool> initialized_{false};
  std::atomic<bool> destroyed_{false};
  SessionStats stats_{};
  std::atomic<uint64_t> decode_errors_{0};
  std::atomic<uint64_t> passthrough_opens_{0};
  std::atomic<uint64_t> passthrough_refusals_{0};
  std::atomic<uint64_t> notifications_{0};
  std::atomic<uint64_t> deferred_{0};
  efuse::accel::OffloadPolicy offload_;
  OffloadPool pool_;
  std::array<std::atomic<uint64_t>, 2> inval_failures_{};  // by InvalKind
  std::array<std::atomic<bool>, 2> inval_failure_logged_{};
  int notified(InvalKind kind, int rc);

  // Passthrough backing ids: one per inode with passthrough opens.
  struct Backing {
    int id = 0;
    uint32_t opens = 0;
    efuse::SlotFile::Slot* slot = nullptr;  // its record in the restart state
  };
  std::mutex backing_mu_;
  std::unordered_map<uint64_t, Backing> backing_;      // by nodeid
  std::unordered_map<uint64_t, uint64_t> backing_fh_;  // passthrough fh -> nodeid
  // Restart state: the file (null: not recorded) and each passthrough fh's record.
  efuse::SlotFile* state_ = nullptr;
  std::unordered_map<uint64_t, efuse::SlotFile::Slot*> backing_fh_slots_;  // backing_mu_
  bool keep_for_restart_ = false;
  void record_negotiated();

  // Opens a handler answered carry the module's fh (EFUSE_HANDLER_KERNEL_FH), never one of
  // efused's. Their requests that still come up are served with a handle efused holds per
  // node (also keeping the node's backing id registered) until the node is dropped, or for
  // one that took a flock, with a handle of its own until its RELEASE.
  struct KernelOpenHold {
    uint64_t fh = 0;
    bool backed = false;  // counted among the node's passthrough opens: holds its backing id
    uint64_t nodeid = 0;
  };
  std::mutex kernel_opens_mu_;
  std::unordered_map<uint64_t, KernelOpenHold> kernel_opens_;  // by nodeid
  std::unordered_map<uint64_t, KernelOpenHold> kernel_flocks_;  // by module fh
  std::atomic<uint64_t> kernel_open_holds_{0};

  // Blocking lock waits (SETLKW) run on their own threads so workers stay free.
  std::mutex waits_mu_;
  std::condition_variable waits_cv_;
  std::unordered_set<uint64_t> waiting_;      // uniques of pending waits
  std::unordered_set<uint64_t> interrupted_;  // subset of waiting_ that got INTERRUPT
  size_t waiters_ = 0;
  bool stopping_ = false;

  // Server-side flock and the asynchronous RELEASE. A flock lives on an open file description
  // and goes when the kernel releases it; close() answers after FLUSH, but RELEASE comes
  // later and another worker may serve a later flock first. Handles holding a flock, by
  // (nodeid, fh), with whether a FLUSH (a close of one of their descriptors) came since;
  // a conflicting LOCK_NB waits a moment for such a handle's RELEASE (see do_setlk).
  FlockHolders flock_holders_;                 // guarded by waits_mu_
  std::atomic<size_t> flock_holder_count_{0};  // skips the lock on FLUSH and RELEASE
  std::atomic<uint64_t> flock_releases_{0};    // changed only under waits_mu_
};

}  // namespace fuse

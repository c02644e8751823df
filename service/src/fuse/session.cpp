// Session: the request cycle (decode, dispatch, the one-reply backstop, deferred replies),
// INIT / DESTROY / INTERRUPT, notifications and shutdown. The operations live in
// session_{entry,file,dir,xattr,locks,backing}.cpp.
#include "fuse/session.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "common/log.h"
#include "fuse/opcode_list.h"
#include "fuse/opcodes.h"
#include "fuse/session_request.h"

namespace fuse {

DeferredReply Session::defer(Request& r) {
  r.replied = true;
  r.deferred = true;
  r.out.defer();
  deferred_.fetch_add(1, std::memory_order_relaxed);
  return DeferredReply(*this, r.out, r.hdr.unique, r.hdr.opcode, r.start_ns);
}

void Session::deferred_answered(uint32_t opcode, uint64_t start_ns, int err) {
  stats_[opcode <= k::kMaxOpcode ? opcode : 0].record(monotonic_ns() - start_ns, err);
  deferred_.fetch_sub(1, std::memory_order_relaxed);
}

// The dispatch table, from the one opcode table: opcode `name` is served by do_<name>.
const std::array<Session::Handler, k::kMaxOpcode + 1> Session::kHandlers = [] {
  std::array<Handler, k::kMaxOpcode + 1> t{};
#define EFUSE_OPCODE_HANDLER(E, n, name) t[n] = &Session::do_##name;
#define EFUSE_OPCODE_UNSERVED(E, n, name)
  EFUSE_FUSE_OPCODES(EFUSE_OPCODE_HANDLER, EFUSE_OPCODE_UNSERVED)
#undef EFUSE_OPCODE_HANDLER
#undef EFUSE_OPCODE_UNSERVED
  return t;
}();

Session::Session(fs::Filesystem& fs, SessionOptions opts)
    : fs_(fs),
      opts_(opts),
      negative_timeout_(opts.negative_timeout),
      statfs_timeout_(opts.statfs_timeout),
      pool_(opts.offload_threads, opts.offload_queue, opts.start_thread) {}

Session::~Session() = default;

size_t Session::request_buffer_size() const {
  uint32_t mw = initialized() ? negotiated_.max_write : opts_.max_write;
  return std::max<size_t>(k::kMinReadBuffer, mw + 4096 + sizeof(k::fuse_in_header) +
                                                 sizeof(k::fuse_write_in));
}

uint64_t Session::handle(std::span<const char> request, Transport& out,
                         std::span<char> scratch, uint64_t start_ns) noexcept {
  Reader whole(request);
  auto hdr = whole.take<k::fuse_in_header>();
  if (!hdr) {
    // Not even a header: nothing to reply to.
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("dropping a %zu-byte request shorter than its header", request.size());
    return monotonic_ns();
  }
  size_t extlen = static_cast<size_t>(hdr->total_extlen) * 8;
  Request r{*hdr, Reader({}), out, scratch, {hdr->uid, hdr->gid, hdr->pid, hdr->unique}};
  if (hdr->len != request.size() || hdr->len < sizeof(k::fuse_in_header) + extlen) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    r.reply_err(EIO);
    return monotonic_ns();
  }
  // Extensions (security context, supplementary groups) trail the body; efused ignores them.
  r.body = Reader(request.subspan(sizeof(k::fuse_in_header),
                                  request.size() - sizeof(k::fuse_in_header) - extlen));
  uint32_t op = hdr->opcode;
  r.start_ns = start_ns != 0 ? start_ns : monotonic_ns();
  r.ctx.now_ns = static_cast<int64_t>(r.start_ns);
  if (KernelAnswers* answers = answers_.load(std::memory_order_acquire)) {
    r.session = this;
    r.answers = answers;
    r.raw = request.subspan(sizeof(k::fuse_in_header),
                            request.size() - sizeof(k::fuse_in_header) - extlen);
    r.answers_since = answers_begin(op);
    answers_before(r);
  }
  try {
    dispatch(r);
  } catch (const std::bad_alloc&) {
    if (!r.replied) r.reply_err(ENOMEM);
  } catch (...) {
    LOG_ERROR("unexpected exception while handling %s", opcode_name(op));
    if (!r.replied) r.reply_err(EIO);
  }
  if (!r.replied) {
    LOG_ERROR("BUG: %s left without a reply", opcode_name(op));
    r.reply_err(EIO);
  }
  const uint64_t end = monotonic_ns();
  if (!r.deferred) stats_[op <= k::kMaxOpcode ? op : 0].record(end - r.start_ns, r.error);
  return end;
}

void Session::malformed(Request& r) {
  decode_errors_.fetch_add(1, std::memory_order_relaxed);
  r.reply_err(EINVAL);
}

void Session::dispatch(Request& r) {
  uint32_t op = r.hdr.opcode;
  if (!initialized() && op != static_cast<uint32_t>(k::Opcode::Init)) return r.reply_err(EIO);
  if (initialized() && op == static_cast<uint32_t>(k::Opcode::Init)) return r.reply_err(EIO);
  Handler h = op <= k::kMaxOpcode ? kHandlers[op] : nullptr;
  if (h == nullptr) return r.reply_err(ENOSYS);
  (this->*h)(r);
}

void Session::do_init(Request& r) {
  // Kernels before 7.36 send only the first 16 bytes; anything shorter is malformed.
  if (r.body.remaining() < k::kCompatInitInSize) return malformed(r);
  auto in = r.body.take_prefix<k::fuse_init_in>(
      std::min(r.body.remaining(), sizeof(k::fuse_init_in)));
  if (!in || in->major == 0) return malformed(r);
  k::fuse_init_out o{};
  o.major = k::kVersion;
  o.minor = k::kMinorVersion;
  if (in->major != k::kVersion) {
    // A newer major: reply with ours so the kernel can retry; an older one we cannot serve.
    LOG_ERROR("kernel speaks FUSE %u.%u; efused needs 7.%u or newer", in->major, in->minor,
              k::kMinMinor);
    if (in->major > k::kVersion) return r.reply(&o, 8);
    return r.reply_err(EPROTO);
  }
  if (in->minor < k::kMinMinor) {
    LOG_ERROR("kernel speaks FUSE 7.%u; efused needs 7.%u or newer", in->minor, k::kMinMinor);
    return r.reply_err(EPROTO);
  }
  uint64_t offered = in->flags;
  if (offered & k::init::kInitExt) offered |= static_cast<uint64_t>(in->flags2) << 32;
  offered &= ~opts_.masked_flags;

  // What the session itself wants; the backend's capabilities it asks the backend for.
  uint64_t want = k::init::kAsyncRead | k::init::kAtomicOTrunc |
                  k::init::kBigWrites | k::init::kAutoInvalData |
                  k::init::kDoReaddirplus | k::init::kReaddirplusAuto | k::init::kAsyncDio |
                  k::init::kParallelDirops | k::init::kMaxPages | k::init::kCacheSymlinks |
                  k::init::kSetxattrExt | k::init::kInitExt | k::init::kDontMask |
                  k::init::kHandleKillprivV2;
  if (opts_.posix_acl) want |= k::init::kPosixAcl;
  if (opts_.io_uring) want |= k::init::kOverIoUring;
  fs::Capabilities on_offer;  // what the kernel offers and the mount's options allow
  on_offer.writeback_cache = opts_.writeback_cache && (offered & k::init::kWritebackCache);
  on_offer.passthrough = opts_.passthrough && (offered & k::init::kPassthrough);
  on_offer.posix_locks = offered & k::init::kPosixLocks;
  on_offer.flock_locks = offered & k::init::kFlockLocks;
  fs::Capabilities wanted = fs_.negotiate(on_offer);
  if (wanted.writeback_cache && on_offer.writeback_cache) want |= k::init::kWritebackCache;
  if (wanted.passthrough && on_offer.passthrough) want |= k::init::kPassthrough;
  if (wanted.posix_locks && on_offer.posix_locks) want |= k::init::kPosixLocks;
  if (wanted.flock_locks && on_offer.flock_locks) want |= k::init::kFlockLocks;
  uint64_t granted = offered & want;
  // The kernel refuses writeback cache combined with passthrough opens; prefer passthrough.
  if ((granted & k::init::kPassthrough) && (granted & k::init::kWritebackCache))
    granted &= ~k::init::kWritebackCache;

  Negotiated& n = negotiated_;
  n.major = k::kVersion;
  n.minor = std::min(in->minor, k::kMinorVersion);
  n.kernel_flags = offered;
  n.flags = granted;
  n.max_readahead = in->max_readahead;
  n.max_write = opts_.max_write;
  if (granted & k::init::kMaxPages) {
    n.max_pages = static_cast<uint16_t>(std::min<uint32_t>(opts_.max_write / 4096, 256));
  } else {
    n.max_write = std::min<uint32_t>(n.max_write, 32 * 4096);
    n.max_pages = 32;
  }

  o.minor = n.minor;
  o.max_readahead = in->max_readahead;
  o.flags = static_cast<uint32_t>(granted);
  o.flags2 = static_cast<uint32_t>(granted >> 32);
  o.max_background = opts_.max_background;
  o.congestion_threshold = static_cast<uint16_t>(opts_.max_background * 3 / 4);
  o.max_write = n.max_write;
  o.time_gran = 1;
  o.max_pages = n.max_pages;
  if (granted & k::init::kPassthrough) o.max_stack_depth = 1;

  fs::Capabilities caps;
  caps.writeback_cache = granted & k::init::kWritebackCache;
  caps.passthrough = granted & k::init::kPassthrough;
  caps.posix_locks = granted & k::init::kPosixLocks;
  caps.flock_locks = granted & k::init::kFlockLocks;
  fs_.init(caps);

  LOG_INFO("INIT: kernel FUSE 7.%u, using 7.%u; max_write %u, max_pages %u; passthrough %s, "
           "writeback cache %s, io_uring %s",
           in->minor, n.minor, n.max_write, n.max_pages, caps.passthrough ? "on" : "off",
           caps.writeback_cache ? "on" : "off",
           (granted & k::init::kOverIoUring)    ? "on"
           : (offered & k::init::kOverIoUring) ? "offered, not used"
                                                : "not offered");
  size_t len = n.minor < 23 ? 24 : sizeof o;
  record_negotiated();
  r.reply(&o, len);
  initialized_.store(true, std::memory_order_release);
}

void Session::do_destroy(Request& r) {
  fs_.destroy();
  destroyed_.store(true, std::memory_order_release);
  r.reply_ok();
}

void Session::do_interrupt(Request& r) {
  r.none();
  auto in = r.body.take<k::fuse_interrupt_in>();
  if (!in) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::lock_guard lk(waits_mu_);
  if (waiting_.count(in->unique)) {
    interrupted_.insert(in->unique);
    waits_cv_.notify_all();
  }
  // Other requests finish promptly on their own; nothing to cancel.
}

int Session::notify_inval_inode(uint64_t nodeid, int64_t off, int64_t len) {
  if (!initialized() || conn_ == nullptr) return -ENOTCONN;
  k::fuse_notify_inval_inode_out arg{nodeid, off, len};
  k::fuse_out_header oh{static_cast<uint32_t>(sizeof oh + sizeof arg),
                        static_cast<int32_t>(k::NotifyCode::InvalInode), 0};
  struct iovec iov[2] = {{&oh, sizeof oh}, {&arg, sizeof arg}};
  notifications_.fetch_add(1, std::memory_order_relaxed);
  return notified(InvalKind::Inode, conn_->notify(iov, 2));
}

int Session::notify_inval_entry(uint64_t parent, std::string_view name, bool expire_only) {
  if (!initialized() || conn_ == nullptr) return -ENOTCONN;
  if (name.empty() || name.size() > 1024) return -EINVAL;
  const uint32_t flags =
      expire_only && negotiated_.minor >= k::kExpireOnlyMinor ? k::kExpireOnly : 0;
  k::fuse_notify_inval_entry_out arg{parent, static_cast<uint32_t>(name.size()), flags};
  char nul = '\0';
  k::fuse_out_header oh{static_cast<uint32_t>(sizeof oh + sizeof arg + name.size() + 1),
                        static_cast<int32_t>(k::NotifyCode::InvalEntry), 0};
  struct iovec iov[4] = {{&oh, sizeof oh},
                         {&arg, sizeof arg},
                         {const_cast<char*>(name.data()), name.size()},
                         {&nul, 1}};
  notifications_.fetch_add(1, std::memory_order_relaxed);
  return notified(InvalKind::Entry, conn_->notify(iov, 4));
}

// A notification's result: ENOENT (the kernel forgot the object meanwhile) is no failure;
// anything else is counted and logged once per kind (the kernel's caches may now be stale).
int Session::notified(InvalKind kind, int rc) {
  if (rc >= 0 || rc == -ENOENT) return rc;
  size_t k = static_cast<size_t>(kind);
  inval_failures_[k].fetch_add(1, std::memory_order_relaxed);
  if (!inval_failure_logged_[k].exchange(true))
    LOG_WARN("the kernel refused a %s invalidation (%s); its cache may be stale until the "
             "timeout (efuse_invalidation_failures_total counts them; logged once)",
             kind == InvalKind::Inode ? "inode" : "entry", strerror(-rc));
  return rc;
}

void Session::shutdown() {
  {
    std::unique_lock lk(waits_mu_);
    stopping_ = true;
    waits_cv_.notify_all();
    waits_cv_.wait(lk, [this] { return waiters_ == 0; });
  }
  // Offloaded requests: those queued run and answer (an fsync asked for is done).
  pool_.stop();
  release_kernel_opens();
  close_backing_ids();
}

}  // namespace fuse

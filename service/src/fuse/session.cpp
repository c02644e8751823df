#include "fuse/session.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <thread>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/opcodes.h"
#include "fuse/wire.h"

namespace fuse {

using efuse::Errno;
using efuse::Result;
using efuse::Status;
namespace k = kernel;
namespace fs = efuse::fs;

struct Session::Request {
  k::fuse_in_header hdr;
  Reader body;
  Transport& out;
  std::span<char> scratch;
  fs::Context ctx;
  uint64_t start_ns = 0;
  bool replied = false;
  bool deferred = false;  // a DeferredReply answers (and records) it
  int error = 0;

  void send(const struct iovec* payload, int n, int err = 0) {
    int rc = send_reply(out, hdr.unique, err, {payload, static_cast<size_t>(n)});
    // ENOENT: the request was interrupted and the kernel no longer waits; not an error.
    if (rc < 0 && rc != -ENOENT)
      LOG_DEBUG("reply to %s (unique %llu) failed: %s", opcode_name(hdr.opcode),
                static_cast<unsigned long long>(hdr.unique), strerror(-rc));
    replied = true;
    error = rc == -E2BIG ? EIO : err;
  }
  void reply_err(int err) { send(nullptr, 0, err); }
  void reply_ok() { send(nullptr, 0, 0); }
  void reply(const void* data, size_t len) {
    struct iovec iov{const_cast<void*>(data), len};
    send(&iov, 1);
  }
  template <class T>
  void reply(const T& v) { reply(&v, sizeof v); }
  void none() { replied = true; }  // FORGET, BATCH_FORGET, INTERRUPT take no reply
};

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

namespace {

// Malformed request body: the kernel never sends one, so a forged or truncated request is
// answered with EINVAL and counted.
#define TAKE(var, type)               \
  auto var = r.body.take<type>();     \
  if (!var) return malformed(r);
#define TAKE_NAME(var)                \
  auto var = r.body.take_name();      \
  if (!var) return malformed(r);

}  // namespace

const std::array<Session::Handler, k::kMaxOpcode + 1> Session::kHandlers = [] {
  std::array<Handler, k::kMaxOpcode + 1> t{};
  auto set = [&t](k::Opcode op, Handler h) { t[static_cast<uint32_t>(op)] = h; };
  set(k::Opcode::Lookup, &Session::do_lookup);
  set(k::Opcode::Forget, &Session::do_forget);
  set(k::Opcode::Getattr, &Session::do_getattr);
  set(k::Opcode::Setattr, &Session::do_setattr);
  set(k::Opcode::Readlink, &Session::do_readlink);
  set(k::Opcode::Symlink, &Session::do_symlink);
  set(k::Opcode::Mknod, &Session::do_mknod);
  set(k::Opcode::Mkdir, &Session::do_mkdir);
  set(k::Opcode::Unlink, &Session::do_unlink);
  set(k::Opcode::Rmdir, &Session::do_rmdir);
  set(k::Opcode::Rename, &Session::do_rename);
  set(k::Opcode::Link, &Session::do_link);
  set(k::Opcode::Open, &Session::do_open);
  set(k::Opcode::Read, &Session::do_read);
  set(k::Opcode::Write, &Session::do_write);
  set(k::Opcode::Statfs, &Session::do_statfs);
  set(k::Opcode::Release, &Session::do_release);
  set(k::Opcode::Fsync, &Session::do_fsync);
  set(k::Opcode::Setxattr, &Session::do_setxattr);
  set(k::Opcode::Getxattr, &Session::do_getxattr);
  set(k::Opcode::Listxattr, &Session::do_listxattr);
  set(k::Opcode::Removexattr, &Session::do_removexattr);
  set(k::Opcode::Flush, &Session::do_flush);
  set(k::Opcode::Init, &Session::do_init);
  set(k::Opcode::Opendir, &Session::do_opendir);
  set(k::Opcode::Readdir, &Session::do_readdir);
  set(k::Opcode::Releasedir, &Session::do_releasedir);
  set(k::Opcode::Fsyncdir, &Session::do_fsyncdir);
  set(k::Opcode::Getlk, &Session::do_getlk);
  set(k::Opcode::Setlk, &Session::do_setlk);
  set(k::Opcode::Setlkw, &Session::do_setlkw);
  set(k::Opcode::Access, &Session::do_access);
  set(k::Opcode::Create, &Session::do_create);
  set(k::Opcode::Interrupt, &Session::do_interrupt);
  set(k::Opcode::Destroy, &Session::do_destroy);
  set(k::Opcode::BatchForget, &Session::do_batch_forget);
  set(k::Opcode::Fallocate, &Session::do_fallocate);
  set(k::Opcode::Readdirplus, &Session::do_readdirplus);
  set(k::Opcode::Rename2, &Session::do_rename2);
  set(k::Opcode::Lseek, &Session::do_lseek);
  set(k::Opcode::CopyFileRange, &Session::do_copy_file_range);
  return t;
}();

Session::Session(fs::Filesystem& fs, SessionOptions opts)
    : fs_(fs), opts_(opts), negative_timeout_(opts.negative_timeout) {}

Session::~Session() = default;

size_t Session::request_buffer_size() const {
  uint32_t mw = initialized() ? negotiated_.max_write : opts_.max_write;
  return std::max<size_t>(k::kMinReadBuffer, mw + 4096 + sizeof(k::fuse_in_header) +
                                                 sizeof(k::fuse_write_in));
}

void Session::handle(std::span<const char> request, Transport& out,
                     std::span<char> scratch) noexcept {
  Reader whole(request);
  auto hdr = whole.take<k::fuse_in_header>();
  if (!hdr) {
    // Not even a header: nothing to reply to.
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("dropping a %zu-byte request shorter than its header", request.size());
    return;
  }
  size_t extlen = static_cast<size_t>(hdr->total_extlen) * 8;
  Request r{*hdr, Reader({}), out, scratch, {hdr->uid, hdr->gid, hdr->pid, hdr->unique}};
  if (hdr->len != request.size() || hdr->len < sizeof(k::fuse_in_header) + extlen) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return r.reply_err(EIO);
  }
  // Extensions (security context, supplementary groups) trail the body; efused ignores them.
  r.body = Reader(request.subspan(sizeof(k::fuse_in_header),
                                  request.size() - sizeof(k::fuse_in_header) - extlen));
  uint32_t op = hdr->opcode;
  r.start_ns = monotonic_ns();
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
  if (!r.deferred) stats_[op <= k::kMaxOpcode ? op : 0].record(monotonic_ns() - r.start_ns, r.error);
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

// ---- INIT / DESTROY / INTERRUPT ------------------------------------------------------

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

  uint64_t want = k::init::kAsyncRead | k::init::kPosixLocks | k::init::kAtomicOTrunc |
                  k::init::kBigWrites | k::init::kFlockLocks | k::init::kAutoInvalData |
                  k::init::kDoReaddirplus | k::init::kReaddirplusAuto | k::init::kAsyncDio |
                  k::init::kParallelDirops | k::init::kMaxPages | k::init::kCacheSymlinks |
                  k::init::kSetxattrExt | k::init::kInitExt | k::init::kDontMask |
                  k::init::kHandleKillprivV2;
  if (opts_.posix_acl) want |= k::init::kPosixAcl;
  if (opts_.writeback_cache) want |= k::init::kWritebackCache;
  if (opts_.passthrough) want |= k::init::kPassthrough;
  if (opts_.io_uring) want |= k::init::kOverIoUring;
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

// ---- entries and attributes ------------------------------------------------------------

void Session::reply_entry(Request& r, const fs::Entry& e) {
  k::fuse_entry_out o{};
  o.nodeid = e.ino;
  o.generation = e.generation;
  split_timeout(e.entry_timeout, &o.entry_valid, &o.entry_valid_nsec);
  split_timeout(e.attr_timeout, &o.attr_valid, &o.attr_valid_nsec);
  encode_attr(e.attr, &o.attr);
  r.reply(o);
}

void Session::do_lookup(Request& r) {
  TAKE_NAME(name);
  auto e = fs_.lookup(r.ctx, r.hdr.nodeid, *name);
  if (!e.ok()) {
    // A negative entry with a timeout lets the kernel cache the absence.
    double neg_timeout = negative_timeout_.load(std::memory_order_relaxed);
    if (e.error() == ENOENT && neg_timeout > 0) {
      fs::Entry neg;
      neg.entry_timeout = neg_timeout;
      return reply_entry(r, neg);
    }
    return r.reply_err(e.error());
  }
  reply_entry(r, *e);
}

void Session::do_forget(Request& r) {
  r.none();
  auto in = r.body.take<k::fuse_forget_in>();
  if (!in) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  fs_.forget(r.hdr.nodeid, in->nlookup);
}

void Session::do_batch_forget(Request& r) {
  r.none();
  auto in = r.body.take<k::fuse_batch_forget_in>();
  if (!in) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  for (uint32_t i = 0; i < in->count; ++i) {
    auto one = r.body.take<k::fuse_forget_one>();
    if (!one) {
      decode_errors_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    fs_.forget(one->nodeid, one->nlookup);
  }
}

void Session::do_getattr(Request& r) {
  TAKE(in, k::fuse_getattr_in);
  uint64_t fh = in->fh;
  auto a = fs_.getattr(r.ctx, r.hdr.nodeid, (in->getattr_flags & k::kGetattrFh) ? &fh : nullptr);
  if (!a.ok()) return r.reply_err(a.error());
  k::fuse_attr_out o{};
  split_timeout(a->timeout, &o.attr_valid, &o.attr_valid_nsec);
  encode_attr(a->attr, &o.attr);
  r.reply(o);
}

void Session::do_setattr(Request& r) {
  TAKE(in, k::fuse_setattr_in);
  fs::SetattrRequest s;
  uint32_t v = in->valid;
  s.set_mode = v & k::kFattrMode;
  s.set_uid = v & k::kFattrUid;
  s.set_gid = v & k::kFattrGid;
  s.set_size = v & k::kFattrSize;
  s.set_atime = v & k::kFattrAtime;
  s.set_mtime = v & k::kFattrMtime;
  s.atime_now = v & k::kFattrAtimeNow;
  s.mtime_now = v & k::kFattrMtimeNow;
  s.has_fh = v & k::kFattrFh;
  r.ctx.kill_suidgid = v & k::kFattrKillSuidgid;
  s.fh = in->fh;
  s.mode = in->mode;
  s.uid = in->uid;
  s.gid = in->gid;
  s.size = in->size;
  s.atime = {static_cast<time_t>(in->atime), static_cast<long>(in->atimensec)};
  s.mtime = {static_cast<time_t>(in->mtime), static_cast<long>(in->mtimensec)};
  if (s.atime.tv_nsec >= 1000000000 || s.mtime.tv_nsec >= 1000000000) return malformed(r);
  auto a = fs_.setattr(r.ctx, r.hdr.nodeid, s);
  if (!a.ok()) return r.reply_err(a.error());
  k::fuse_attr_out o{};
  split_timeout(a->timeout, &o.attr_valid, &o.attr_valid_nsec);
  encode_attr(a->attr, &o.attr);
  r.reply(o);
}

void Session::do_readlink(Request& r) {
  auto s = fs_.readlink(r.ctx, r.hdr.nodeid);
  if (!s.ok()) return r.reply_err(s.error());
  r.reply(s->data(), s->size());
}

void Session::do_symlink(Request& r) {
  TAKE_NAME(name);
  auto target = r.body.take_string();
  if (!target || target->empty()) return malformed(r);
  auto e = fs_.symlink(r.ctx, r.hdr.nodeid, *name, *target);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_mknod(Request& r) {
  TAKE(in, k::fuse_mknod_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  auto e = fs_.mknod(r.ctx, r.hdr.nodeid, *name, in->mode, in->rdev);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_mkdir(Request& r) {
  TAKE(in, k::fuse_mkdir_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  auto e = fs_.mkdir(r.ctx, r.hdr.nodeid, *name, in->mode);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_unlink(Request& r) {
  TAKE_NAME(name);
  auto s = fs_.unlink(r.ctx, r.hdr.nodeid, *name);
  r.reply_err(s.error());
}

void Session::do_rmdir(Request& r) {
  TAKE_NAME(name);
  auto s = fs_.rmdir(r.ctx, r.hdr.nodeid, *name);
  r.reply_err(s.error());
}

void Session::do_rename(Request& r) {
  TAKE(in, k::fuse_rename_in);
  TAKE_NAME(from);
  TAKE_NAME(to);
  auto s = fs_.rename(r.ctx, r.hdr.nodeid, *from, in->newdir, *to, 0);
  r.reply_err(s.error());
}

void Session::do_rename2(Request& r) {
  TAKE(in, k::fuse_rename2_in);
  TAKE_NAME(from);
  TAKE_NAME(to);
  auto s = fs_.rename(r.ctx, r.hdr.nodeid, *from, in->newdir, *to, in->flags);
  r.reply_err(s.error());
}

void Session::do_link(Request& r) {
  TAKE(in, k::fuse_link_in);
  TAKE_NAME(name);
  auto e = fs_.link(r.ctx, in->oldnodeid, r.hdr.nodeid, *name);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

// ---- files -------------------------------------------------------------------------------

void Session::fill_open_out(k::fuse_open_out* o, const fs::OpenInfo& info, bool dir,
                            Transport& t, uint64_t nodeid) {
  *o = {};
  o->fh = info.fh;
  if (info.direct_io) o->open_flags |= k::kFopenDirectIo;
  if (info.keep_cache) o->open_flags |= k::kFopenKeepCache;
  if (info.nonseekable) o->open_flags |= k::kFopenNonseekable;
  if (dir || info.passthrough_fd < 0 || !negotiated_.has(k::init::kPassthrough)) return;
  // The kernel wants one backing id per inode for all its passthrough opens (a second id
  // for the same inode fails the open with EIO). The id lives while the inode has opens.
  std::lock_guard lk(backing_mu_);
  Backing& b = backing_[nodeid];
  if (b.id <= 0) {
    int id = t.backing_open(info.passthrough_fd);
    if (id <= 0) {
      backing_.erase(nodeid);
      // The kernel refused (stacking depth, permissions, limits): serve this file's I/O.
      uint64_t n = passthrough_refusals_.fetch_add(1, std::memory_order_relaxed);
      fs_.passthrough_refused(nodeid);
      if (n == 0)
        LOG_WARN("kernel refused a passthrough backing file (%s); serving I/O in efused",
                 strerror(-id));
      return;
    }
    b.id = id;
  }
  ++b.opens;
  backing_fh_[info.fh] = nodeid;
  // The kernel fails a passthrough open (EIO) that carries any flag outside
  // PASSTHROUGH | DIRECT_IO | PARALLEL_DIRECT_WRITES | NOFLUSH; page-cache flags such as
  // KEEP_CACHE mean nothing without a FUSE page cache anyway.
  o->open_flags &= k::kFopenNoflush | k::kFopenParallelDirectWrites;
  o->open_flags |= k::kFopenPassthrough;
  o->backing_id = b.id;
  passthrough_opens_.fetch_add(1, std::memory_order_relaxed);
}

void Session::reply_open(Request& r, const fs::OpenInfo& info, bool dir) {
  k::fuse_open_out o;
  fill_open_out(&o, info, dir, r.out, r.hdr.nodeid);
  r.reply(o);
}

void Session::do_open(Request& r) {
  TAKE(in, k::fuse_open_in);
  r.ctx.kill_suidgid = in->open_flags & k::kOpenKillSuidgid;
  auto o = fs_.open(r.ctx, r.hdr.nodeid, static_cast<int>(in->flags));
  if (!o.ok()) return r.reply_err(o.error());
  reply_open(r, *o, false);
}

void Session::do_create(Request& r) {
  TAKE(in, k::fuse_create_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  r.ctx.kill_suidgid = in->open_flags & k::kOpenKillSuidgid;
  auto c = fs_.create(r.ctx, r.hdr.nodeid, *name, in->mode, static_cast<int>(in->flags));
  if (!c.ok()) return r.reply_err(c.error());
  struct {
    k::fuse_entry_out e;
    k::fuse_open_out o;
  } out{};
  out.e.nodeid = c->entry.ino;
  out.e.generation = c->entry.generation;
  split_timeout(c->entry.entry_timeout, &out.e.entry_valid, &out.e.entry_valid_nsec);
  split_timeout(c->entry.attr_timeout, &out.e.attr_valid, &out.e.attr_valid_nsec);
  encode_attr(c->entry.attr, &out.e.attr);
  fill_open_out(&out.o, c->open, false, r.out, c->entry.ino);
  static_assert(sizeof out == sizeof(k::fuse_entry_out) + sizeof(k::fuse_open_out));
  r.reply(out);
}

void Session::do_read(Request& r) {
  TAKE(in, k::fuse_read_in);
  size_t size = std::min<size_t>(in->size, r.scratch.size());
  auto n = fs_.read(r.ctx, r.hdr.nodeid, in->fh, in->offset, r.scratch.first(size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), std::min(*n, size));
}

void Session::do_write(Request& r) {
  TAKE(in, k::fuse_write_in);
  auto data = r.body.take_bytes(in->size);
  if (!data) return malformed(r);
  r.ctx.kill_suidgid = in->write_flags & k::kWriteKillSuidgid;
  auto n = fs_.write(r.ctx, r.hdr.nodeid, in->fh, in->offset, *data);
  if (!n.ok()) return r.reply_err(n.error());
  k::fuse_write_out o{};
  o.size = static_cast<uint32_t>(*n);
  r.reply(o);
}

void Session::do_flush(Request& r) {
  TAKE(in, k::fuse_flush_in);
  flock_closed(r.hdr.nodeid, in->fh, false);
  r.reply_err(fs_.flush(r.ctx, r.hdr.nodeid, in->fh, in->lock_owner).error());
}

void Session::do_release(Request& r) {
  TAKE(in, k::fuse_release_in);
  {
    // The kernel holds its own reference to the backing file while the inode is open; the
    // id only names it for new opens, so it goes with the inode's last passthrough open.
    std::lock_guard lk(backing_mu_);
    auto it = backing_fh_.find(in->fh);
    if (it != backing_fh_.end()) {
      auto b = backing_.find(it->second);
      if (b != backing_.end() && --b->second.opens == 0) {
        r.out.backing_close(b->second.id);
        backing_.erase(b);
      }
      backing_fh_.erase(it);
    }
  }
  if (in->release_flags & k::kReleaseFlockUnlock)
    (void)fs_.flock(r.ctx, r.hdr.nodeid, in->fh, LOCK_UN);
  Status s = fs_.release(r.ctx, r.hdr.nodeid, in->fh);
  flock_closed(r.hdr.nodeid, in->fh, true);  // after the description is gone
  r.reply_err(s.error());
}

void Session::do_fsync(Request& r) {
  TAKE(in, k::fuse_fsync_in);
  r.reply_err(
      fs_.fsync(r.ctx, r.hdr.nodeid, in->fh, in->fsync_flags & k::kFsyncFdatasync).error());
}

// ---- directories --------------------------------------------------------------------------

void Session::do_opendir(Request& r) {
  TAKE(in, k::fuse_open_in);
  auto o = fs_.opendir(r.ctx, r.hdr.nodeid, static_cast<int>(in->flags));
  if (!o.ok()) return r.reply_err(o.error());
  reply_open(r, *o, true);
}

namespace {

class BufferDirSink final : public fs::DirSink {
 public:
  BufferDirSink(std::span<char> buf, bool plus) : buf_(buf), plus_(plus) {}
  bool plus() const override { return plus_; }
  bool fits(std::string_view name) const override {
    size_t need = plus_ ? k::direntplus_size(name.size()) : k::dirent_size(name.size());
    return used_ + need <= buf_.size();
  }
  bool add(std::string_view name, uint64_t ino, uint32_t dtype, uint64_t next_off) override {
    if (plus_) {
      fs::Entry e;
      e.attr.st_ino = ino;
      e.attr.st_mode = dtype << 12;
      return add_plus(name, e, next_off);
    }
    size_t need = k::dirent_size(name.size());
    if (used_ + need > buf_.size()) return false;
    char* p = buf_.data() + used_;
    k::fuse_dirent d{ino, next_off, static_cast<uint32_t>(name.size()), dtype};
    std::memcpy(p, &d, sizeof d);
    std::memcpy(p + sizeof d, name.data(), name.size());
    std::memset(p + sizeof d + name.size(), 0, need - sizeof d - name.size());
    used_ += need;
    return true;
  }
  bool add_plus(std::string_view name, const fs::Entry& e, uint64_t next_off) override {
    size_t need = k::direntplus_size(name.size());
    if (used_ + need > buf_.size()) return false;
    char* p = buf_.data() + used_;
    k::fuse_direntplus d{};
    d.entry_out.nodeid = e.ino;
    d.entry_out.generation = e.generation;
    split_timeout(e.entry_timeout, &d.entry_out.entry_valid, &d.entry_out.entry_valid_nsec);
    split_timeout(e.attr_timeout, &d.entry_out.attr_valid, &d.entry_out.attr_valid_nsec);
    encode_attr(e.attr, &d.entry_out.attr);
    d.dirent = {e.attr.st_ino, next_off, static_cast<uint32_t>(name.size()),
                static_cast<uint32_t>((e.attr.st_mode & S_IFMT) >> 12)};
    std::memcpy(p, &d, sizeof d);
    std::memcpy(p + sizeof d, name.data(), name.size());
    std::memset(p + sizeof d + name.size(), 0, need - sizeof d - name.size());
    used_ += need;
    return true;
  }
  size_t used() const { return used_; }

 private:
  std::span<char> buf_;
  bool plus_;
  size_t used_ = 0;
};

}  // namespace

void Session::readdir_common(Request& r, bool plus) {
  TAKE(in, k::fuse_read_in);
  size_t size = std::min<size_t>(in->size, r.scratch.size());
  BufferDirSink sink(r.scratch.first(size), plus);
  auto s = fs_.readdir(r.ctx, r.hdr.nodeid, in->fh, in->offset, sink);
  // Entries already added must reach the kernel (readdirplus counted lookups for them).
  if (!s.ok() && sink.used() == 0) return r.reply_err(s.error());
  r.reply(r.scratch.data(), sink.used());
}

void Session::do_readdir(Request& r) { readdir_common(r, false); }
void Session::do_readdirplus(Request& r) { readdir_common(r, true); }

void Session::do_releasedir(Request& r) {
  TAKE(in, k::fuse_release_in);
  r.reply_err(fs_.releasedir(r.ctx, r.hdr.nodeid, in->fh).error());
}

void Session::do_fsyncdir(Request& r) {
  TAKE(in, k::fuse_fsync_in);
  r.reply_err(
      fs_.fsyncdir(r.ctx, r.hdr.nodeid, in->fh, in->fsync_flags & k::kFsyncFdatasync).error());
}

// ---- misc --------------------------------------------------------------------------------

void Session::do_statfs(Request& r) {
  auto s = fs_.statfs(r.ctx, r.hdr.nodeid);
  if (!s.ok()) return r.reply_err(s.error());
  k::fuse_statfs_out o{};
  o.st.blocks = s->f_blocks;
  o.st.bfree = s->f_bfree;
  o.st.bavail = s->f_bavail;
  o.st.files = s->f_files;
  o.st.ffree = s->f_ffree;
  o.st.bsize = static_cast<uint32_t>(s->f_bsize);
  o.st.namelen = static_cast<uint32_t>(s->f_namemax);
  o.st.frsize = static_cast<uint32_t>(s->f_frsize);
  r.reply(o);
}

void Session::do_access(Request& r) {
  TAKE(in, k::fuse_access_in);
  r.reply_err(fs_.access(r.ctx, r.hdr.nodeid, static_cast<int>(in->mask)).error());
}

void Session::do_setxattr(Request& r) {
  size_t in_size = negotiated_.has(k::init::kSetxattrExt) ? sizeof(k::fuse_setxattr_in)
                                                          : k::kCompatSetxattrInSize;
  auto in = r.body.take_prefix<k::fuse_setxattr_in>(in_size);
  if (!in) return malformed(r);
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  auto value = r.body.take_bytes(in->size);
  if (!value) return malformed(r);
  r.reply_err(fs_.setxattr(r.ctx, r.hdr.nodeid, *name, *value, static_cast<int>(in->flags)).error());
}

void Session::do_getxattr(Request& r) {
  TAKE(in, k::fuse_getxattr_in);
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  if (in->size == 0) {
    auto n = fs_.getxattr(r.ctx, r.hdr.nodeid, *name, {});
    if (!n.ok()) return r.reply_err(n.error());
    k::fuse_getxattr_out o{static_cast<uint32_t>(*n), 0};
    return r.reply(o);
  }
  if (in->size > r.scratch.size()) return r.reply_err(E2BIG);
  auto n = fs_.getxattr(r.ctx, r.hdr.nodeid, *name, r.scratch.first(in->size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), *n);
}

void Session::do_listxattr(Request& r) {
  TAKE(in, k::fuse_getxattr_in);
  if (in->size == 0) {
    auto n = fs_.listxattr(r.ctx, r.hdr.nodeid, {});
    if (!n.ok()) return r.reply_err(n.error());
    k::fuse_getxattr_out o{static_cast<uint32_t>(*n), 0};
    return r.reply(o);
  }
  if (in->size > r.scratch.size()) return r.reply_err(E2BIG);
  auto n = fs_.listxattr(r.ctx, r.hdr.nodeid, r.scratch.first(in->size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), *n);
}

void Session::do_removexattr(Request& r) {
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  r.reply_err(fs_.removexattr(r.ctx, r.hdr.nodeid, *name).error());
}

void Session::do_fallocate(Request& r) {
  TAKE(in, k::fuse_fallocate_in);
  r.reply_err(fs_.fallocate(r.ctx, r.hdr.nodeid, in->fh, static_cast<int>(in->mode), in->offset,
                            in->length)
                  .error());
}

void Session::do_lseek(Request& r) {
  TAKE(in, k::fuse_lseek_in);
  auto off = fs_.lseek(r.ctx, r.hdr.nodeid, in->fh, in->offset, static_cast<int>(in->whence));
  if (!off.ok()) return r.reply_err(off.error());
  k::fuse_lseek_out o{*off};
  r.reply(o);
}

void Session::do_copy_file_range(Request& r) {
  TAKE(in, k::fuse_copy_file_range_in);
  auto n = fs_.copy_file_range(r.ctx, r.hdr.nodeid, in->fh_in, in->off_in, in->nodeid_out,
                               in->fh_out, in->off_out, in->len, in->flags);
  if (!n.ok()) return r.reply_err(n.error());
  k::fuse_write_out o{};
  o.size = static_cast<uint32_t>(std::min<size_t>(*n, UINT32_MAX));
  r.reply(o);
}

// ---- locks --------------------------------------------------------------------------------

static fs::Lock to_lock(const k::fuse_file_lock& l) {
  return fs::Lock{l.start, l.end, l.type, l.pid};
}

void Session::do_getlk(Request& r) {
  TAKE(in, k::fuse_lk_in);
  auto l = fs_.getlk(r.ctx, r.hdr.nodeid, in->fh, in->owner, to_lock(in->lk));
  if (!l.ok()) return r.reply_err(l.error());
  k::fuse_lk_out o{};
  o.lk = {l->start, l->end, l->type, l->pid};
  r.reply(o);
}

static int flock_op(uint32_t type) {
  switch (type) {
    case F_RDLCK: return LOCK_SH;
    case F_WRLCK: return LOCK_EX;
    default: return LOCK_UN;
  }
}

// How long a conflicting LOCK_NB flock waits for the RELEASE of a holder that was closed
// (FLUSH) but not yet released. RELEASE is queued before close() returns, so normally it is
// served within microseconds; the wait runs out only when the holder's description is still
// open elsewhere (a dup, a forked child), and then costs the asker this once per close.
static constexpr auto kReleaseGrace = std::chrono::milliseconds(250);

// Every flock goes through here: the lock is tried without blocking and the session notes
// which handles hold one.
Status Session::try_flock(const fs::Context& ctx, uint64_t nodeid, uint64_t fh, uint32_t type) {
  int op = flock_op(type);
  Status s = fs_.flock(ctx, nodeid, fh, op | LOCK_NB);
  if (!s.ok()) return s;
  std::lock_guard lk(waits_mu_);
  if (op == LOCK_UN) {
    flock_holders_.erase({nodeid, fh});
  } else {
    flock_holders_[{nodeid, fh}] = false;  // locking through it: the description is open
  }
  flock_holder_count_.store(flock_holders_.size(), std::memory_order_relaxed);
  return s;
}

// FLUSH (released = false): one descriptor of the handle was closed, perhaps the last.
// RELEASE (released = true): the description is gone and with it its flock.
void Session::flock_closed(uint64_t nodeid, uint64_t fh, bool released) {
  if (flock_holder_count_.load(std::memory_order_relaxed) == 0) return;
  std::lock_guard lk(waits_mu_);
  auto it = flock_holders_.find({nodeid, fh});
  if (it == flock_holders_.end()) return;
  if (!released) {
    it->second = true;
    return;
  }
  flock_holders_.erase(it);
  flock_holder_count_.store(flock_holders_.size(), std::memory_order_relaxed);
  flock_releases_.fetch_add(1);
  waits_cv_.notify_all();
}

// The handles of one inode that hold a flock (waits_mu_ held).
std::ranges::subrange<Session::FlockHolders::iterator> Session::holders_of(uint64_t nodeid) {
  return {flock_holders_.lower_bound({nodeid, 0}),
          flock_holders_.upper_bound({nodeid, UINT64_MAX})};
}

// Whether another handle of the inode holds a flock and was closed since (waits_mu_ held).
bool Session::closing_holder(uint64_t nodeid, uint64_t fh) {
  for (const auto& [key, closed] : holders_of(nodeid))
    if (key.second != fh && closed) return true;
  return false;
}

static bool conflict(const Status& s) { return s.error() == EAGAIN || s.error() == EWOULDBLOCK; }

void Session::do_setlk(Request& r) {
  TAKE(in, k::fuse_lk_in);
  if (!(in->lk_flags & k::kLkFlock)) {
    Status s = fs_.setlk(r.ctx, r.hdr.nodeid, in->fh, in->owner, to_lock(in->lk));
    return r.reply_err(conflict(s) ? EAGAIN : s.error());
  }
  uint64_t releases = flock_releases_.load();
  Status s = try_flock(r.ctx, r.hdr.nodeid, in->fh, in->lk.type);
  if (conflict(s)) {
    // The holder may be a description closed a moment ago whose RELEASE another worker has
    // not served yet; natively close() would have dropped the lock already.
    std::unique_lock lk(waits_mu_);
    if (flock_releases_.load() != releases || closing_holder(r.hdr.nodeid, in->fh)) {
      lk.unlock();
      return wait_for_lock(r, *in, Clock::now() + kReleaseGrace);
    }
    return r.reply_err(EAGAIN);
  }
  r.reply_err(s.error());
}

void Session::do_setlkw(Request& r) {
  TAKE(in, k::fuse_lk_in);
  Status s = (in->lk_flags & k::kLkFlock)
                 ? try_flock(r.ctx, r.hdr.nodeid, in->fh, in->lk.type)
                 : fs_.setlk(r.ctx, r.hdr.nodeid, in->fh, in->owner, to_lock(in->lk));
  if (!conflict(s)) return r.reply_err(s.error());
  wait_for_lock(r, *in, Clock::time_point::max());
}

// One blocking lock wait: its reply, and its place among the waits shutdown() waits for,
// which it leaves when it goes, answered or not (a wait dropped unanswered answers EIO).
struct Session::LockWait {
  Session& session;
  DeferredReply reply;
  ~LockWait() {
    uint64_t unique = reply.unique();
    { DeferredReply dropped = std::move(reply); }
    std::lock_guard lk(session.waits_mu_);
    session.waiting_.erase(unique);
    session.interrupted_.erase(unique);
    --session.waiters_;
    session.waits_cv_.notify_all();
  }
};

// Conflict: wait on a thread of its own so this worker keeps serving (the holder's unlock
// needs a free worker). The waiter holds the request's DeferredReply; INTERRUPT cancels it
// with EINTR. When no thread can start, the request is answered ENOLCK at once.
void Session::wait_for_lock(Request& r, const k::fuse_lk_in& in, Clock::time_point give_up) {
  {
    std::lock_guard lk(waits_mu_);
    if (stopping_ || waiters_ >= 1024) return r.reply_err(ENOLCK);
    waiting_.insert(r.hdr.unique);
    ++waiters_;
  }
  // std::function wants a copyable callable: the wait travels in a shared_ptr, and stays
  // here when the thread cannot start.
  std::shared_ptr<LockWait> w(new LockWait{*this, defer(r)});
  auto wait = [this, w, ctx = r.ctx, nodeid = r.hdr.nodeid, fh = in.fh, owner = in.owner,
               lock = to_lock(in.lk), is_flock = (in.lk_flags & k::kLkFlock) != 0, give_up] {
    w->reply.reply_err(lock_waiter(ctx, nodeid, fh, owner, lock, is_flock, give_up));
  };
  try {
    if (opts_.start_thread)
      opts_.start_thread(std::move(wait));
    else
      std::thread(std::move(wait)).detach();
  } catch (const std::exception& e) {
    LOG_WARN("cannot start a lock waiter thread (%s); answering ENOLCK", e.what());
    w->reply.reply_err(ENOLCK);
  }
}

// Retries until the lock is granted, the request is interrupted (EINTR) or the session stops
// (EINTR); with a finite give_up (a LOCK_NB flock waiting for a RELEASE) also until no closed
// holder is left or give_up passes (EAGAIN). Returns the errno to answer.
int Session::lock_waiter(const fs::Context& ctx, uint64_t nodeid, uint64_t fh,
                          uint64_t owner, fs::Lock lock, bool is_flock, Clock::time_point give_up) {
  efuse::name_this_thread("efuse-lockwait");
  const bool bounded = give_up != Clock::time_point::max();
  auto delay = std::chrono::milliseconds(1);
  int err = 0;
  for (;;) {
    uint64_t releases = flock_releases_.load();
    Status s = is_flock ? try_flock(ctx, nodeid, fh, lock.type)
                        : fs_.setlk(ctx, nodeid, fh, owner, lock);
    if (!conflict(s)) {
      err = s.error();
      break;
    }
    std::unique_lock lk(waits_mu_);
    if (flock_releases_.load() != releases) continue;  // a holder went meanwhile: try again
    if (bounded && (!closing_holder(nodeid, fh) || Clock::now() >= give_up)) {
      // Still held: what stays of a closed holder is open elsewhere (a dup, a forked child).
      // Forget its close so the next asker does not wait for it again.
      for (auto& [key, closed] : holders_of(nodeid))
        if (key.second != fh) closed = false;
      err = EAGAIN;
      break;
    }
    auto until = std::min(Clock::now() + delay, give_up);
    if (waits_cv_.wait_until(lk, until, [&] {
          return stopping_ || interrupted_.count(ctx.unique) || flock_releases_ != releases;
        }) &&
        (stopping_ || interrupted_.count(ctx.unique))) {
      err = EINTR;
      break;
    }
    delay = std::min(delay * 2, std::chrono::milliseconds(50));
  }
  return err;
}

// ---- notifications ------------------------------------------------------------------------

int Session::notify_inval_inode(Transport& out, uint64_t nodeid, int64_t off, int64_t len) {
  if (!initialized()) return -ENOTCONN;
  k::fuse_notify_inval_inode_out arg{nodeid, off, len};
  k::fuse_out_header oh{static_cast<uint32_t>(sizeof oh + sizeof arg),
                        static_cast<int32_t>(k::NotifyCode::InvalInode), 0};
  struct iovec iov[2] = {{&oh, sizeof oh}, {&arg, sizeof arg}};
  notifications_.fetch_add(1, std::memory_order_relaxed);
  return out.send(iov, 2);
}

int Session::notify_inval_entry(Transport& out, uint64_t parent, std::string_view name) {
  if (!initialized()) return -ENOTCONN;
  if (name.empty() || name.size() > 1024) return -EINVAL;
  k::fuse_notify_inval_entry_out arg{parent, static_cast<uint32_t>(name.size()), 0};
  char nul = '\0';
  k::fuse_out_header oh{static_cast<uint32_t>(sizeof oh + sizeof arg + name.size() + 1),
                        static_cast<int32_t>(k::NotifyCode::InvalEntry), 0};
  struct iovec iov[4] = {{&oh, sizeof oh},
                         {&arg, sizeof arg},
                         {const_cast<char*>(name.data()), name.size()},
                         {&nul, 1}};
  notifications_.fetch_add(1, std::memory_order_relaxed);
  return out.send(iov, 4);
}

void Session::shutdown(Transport& out) {
  {
    std::unique_lock lk(waits_mu_);
    stopping_ = true;
    waits_cv_.notify_all();
    waits_cv_.wait(lk, [this] { return waiters_ == 0; });
  }
  std::lock_guard lk(backing_mu_);
  for (auto& [nodeid, b] : backing_) out.backing_close(b.id);
  backing_.clear();
  backing_fh_.clear();
}

}  // namespace fuse

// Test harness for fuse::Session: a Transport that records replies, a Connection that records
// notifications and backing ids, request builders, reply parsers, and a Session over a
// PassthroughFs on a private temp directory.
//
// Not a test source itself (the unit CMakeLists globs *_test.cpp); the fuse/ tests include it.
#pragma once

#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../testing/temp_dir.h"
#include "common/log.h"
#include "fs/passthrough/passthrough_fs.h"
#include "fuse/kernel.h"
#include "fuse/session.h"

namespace fuse::testing {

namespace k = fuse::kernel;
using efuse::testing::TempDir;

constexpr uint32_t code(k::Opcode op) { return static_cast<uint32_t>(op); }

// The bytes one writev() of these iovecs would carry.
inline std::string joined(const struct iovec* iov, int count) {
  std::string msg;
  for (int i = 0; i < count; ++i)
    msg.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  return msg;
}

// Records every send() as one byte string, the iovecs concatenated: what one write() to
// /dev/fuse would carry. Thread-safe, because SETLKW waiters reply from their own threads.
class RecordingTransport final : public Transport {
 public:
  int send(const struct iovec* iov, int count) override {
    std::string msg = joined(iov, count);
    std::lock_guard lk(mu_);
    sent_.push_back(std::move(msg));
    return 0;
  }
  // Everything sent since the last take().
  std::vector<std::string> take() {
    std::lock_guard lk(mu_);
    std::vector<std::string> out;
    out.swap(sent_);
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> sent_;
};

// A Connection without a device: records notifications and backing-id calls.
//
// backing_open refuses with EPERM by default, as the kernel does for a daemon without
// CAP_SYS_ADMIN, so passthrough opens fall back to I/O through the daemon. grant_backing_ids()
// makes it hand out ids 1, 2, 3... instead, to test the session's id bookkeeping.
class RecordingConnection final : public Connection {
 public:
  int backing_open(int fd) override {
    std::lock_guard lk(mu_);
    backing_open_fds_.push_back(fd);
    if (next_backing_id_ <= 0) return -EPERM;
    return next_backing_id_++;
  }
  void backing_close(int id) override {
    std::lock_guard lk(mu_);
    closed_backing_ids_.push_back(id);
  }
  int notify(const struct iovec* iov, int count) override {
    std::string msg = joined(iov, count);
    std::lock_guard lk(mu_);
    notifications_.push_back(std::move(msg));
    return notify_result_;
  }
  // What notify() answers from now on (0, or -errno as the kernel would).
  void set_notify_result(int rc) {
    std::lock_guard lk(mu_);
    notify_result_ = rc;
  }

  void grant_backing_ids() {
    std::lock_guard lk(mu_);
    next_backing_id_ = 1;
  }
  size_t backing_opens() const {
    std::lock_guard lk(mu_);
    return backing_open_fds_.size();
  }
  std::vector<int> closed_backing_ids() const {
    std::lock_guard lk(mu_);
    return closed_backing_ids_;
  }
  std::vector<std::string> notifications() const {
    std::lock_guard lk(mu_);
    return notifications_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<int> backing_open_fds_;
  std::vector<int> closed_backing_ids_;
  std::vector<std::string> notifications_;
  int notify_result_ = 0;
  int next_backing_id_ = 0;
};

// ---- building requests ---------------------------------------------------------------------

template <class T>
std::string pod(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

// A NUL-terminated string as names travel on the wire.
inline std::string cstr(std::string_view s) {
  std::string out(s);
  out.push_back('\0');
  return out;
}

// fuse_in_header (len set to the full size) followed by `body`.
inline std::string make_request(uint32_t opcode, uint64_t nodeid, uint64_t unique,
                                std::string_view body) {
  k::fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof h + body.size());
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = nodeid;
  h.uid = getuid();
  h.gid = getgid();
  h.pid = static_cast<uint32_t>(getpid());
  return pod(h) + std::string(body);
}

// What a current Linux (protocol 7.45) offers at INIT, flags2 included.
inline constexpr uint64_t kKernelFlags = [] {
  using namespace k::init;
  return kAsyncRead | kPosixLocks | kAtomicOTrunc | kExportSupport | kBigWrites |
         kDontMask | kSpliceWrite | kSpliceMove | kSpliceRead | kFlockLocks | kHasIoctlDir |
         kAutoInvalData | kDoReaddirplus | kReaddirplusAuto | kAsyncDio | kWritebackCache |
         kNoOpenSupport | kParallelDirops | kHandleKillpriv | kPosixAcl | kAbortError |
         kMaxPages | kCacheSymlinks | kNoOpendirSupport | kExplicitInvalData |
         kHandleKillprivV2 | kSetxattrExt | kInitExt | kSecurityCtx | kCreateSuppGroup |
         kHasExpireOnly | kDirectIoAllowMmap | kPassthrough | kNoExportSupport | kHasResend |
         kAllowIdmap | kOverIoUring | kRequestTimeout;
}();

inline std::string init_body(uint32_t major, uint32_t minor, uint64_t flags,
                             uint32_t max_readahead = 128 * 1024) {
  k::fuse_init_in in{};
  in.major = major;
  in.minor = minor;
  in.max_readahead = max_readahead;
  in.flags = static_cast<uint32_t>(flags);
  in.flags2 = static_cast<uint32_t>(flags >> 32);
  return pod(in);
}

// fuse_setxattr_in in its FUSE_SETXATTR_EXT (16-byte) form, name, value.
inline std::string setxattr_body(std::string_view name, std::string_view value, uint32_t flags = 0,
                                 uint32_t setxattr_flags = 0) {
  k::fuse_setxattr_in in{};
  in.size = static_cast<uint32_t>(value.size());
  in.flags = flags;
  in.setxattr_flags = setxattr_flags;
  return pod(in) + cstr(name) + std::string(value);
}

inline std::string getxattr_body(std::string_view name, uint32_t size) {
  k::fuse_getxattr_in in{};
  in.size = size;
  return pod(in) + cstr(name);
}

inline std::string read_body(uint64_t fh, uint64_t offset, uint32_t size) {
  k::fuse_read_in in{};
  in.fh = fh;
  in.offset = offset;
  in.size = size;
  return pod(in);
}

inline std::string write_body(uint64_t fh, uint64_t offset, std::string_view data) {
  k::fuse_write_in in{};
  in.fh = fh;
  in.offset = offset;
  in.size = static_cast<uint32_t>(data.size());
  return pod(in) + std::string(data);
}

inline std::string release_body(uint64_t fh, uint64_t lock_owner = 0) {
  k::fuse_release_in in{};
  in.fh = fh;
  in.lock_owner = lock_owner;
  return pod(in);
}

inline std::string lk_body(uint64_t fh, uint64_t owner, uint32_t type, uint64_t start = 0,
                           uint64_t end = INT64_MAX) {
  k::fuse_lk_in in{};
  in.fh = fh;
  in.owner = owner;
  in.lk = {start, end, type, 0};
  return pod(in);
}

// ---- parsing replies -----------------------------------------------------------------------

struct Reply {
  bool present = false;
  k::fuse_out_header hdr{};
  std::string payload;

  // The reply's errno as a positive number; -1 when there was no reply at all.
  int error() const { return present ? -hdr.error : -1; }
  // The payload read as a T; a payload too short for T is a test failure (and a zero T).
  template <class T>
  T as(size_t offset = 0) const {
    T v{};
    if (payload.size() < offset + sizeof v) {
      ADD_FAILURE() << "reply payload of " << payload.size() << " bytes is too short for a "
                    << sizeof v << "-byte struct at offset " << offset;
      return v;
    }
    std::memcpy(&v, payload.data() + offset, sizeof v);
    return v;
  }
};

// Splits one sent message into header and payload. A message shorter than the header or
// whose header length disagrees with the bytes sent is a test failure.
inline Reply parse_reply(const std::string& msg) {
  Reply r;
  if (msg.size() < sizeof r.hdr) {
    ADD_FAILURE() << "reply of " << msg.size() << " bytes is shorter than fuse_out_header";
    return r;
  }
  std::memcpy(&r.hdr, msg.data(), sizeof r.hdr);
  r.present = true;
  r.payload = msg.substr(sizeof r.hdr);
  EXPECT_EQ(r.hdr.len, msg.size()) << "out_header.len must equal the bytes sent";
  EXPECT_LE(r.hdr.error, 0) << "errors travel negated";
  EXPECT_GT(r.hdr.error, -4096);
  if (r.hdr.error != 0) {
    EXPECT_EQ(msg.size(), sizeof r.hdr) << "an error reply has no payload";
  }
  return r;
}

struct Dirent {
  uint64_t ino = 0;
  uint64_t off = 0;
  uint32_t type = 0;
  std::string name;
  k::fuse_entry_out entry{};  // READDIRPLUS only
};

// Parses a READDIR (plus = false) or READDIRPLUS payload. Every record must start 8-byte
// aligned, have the size dirent_size()/direntplus_size() gives for its name, with zeroed
// padding, and the records must fill the payload exactly.
inline ::testing::AssertionResult parse_dirents(const std::string& payload, bool plus,
                                                std::vector<Dirent>* out) {
  size_t pos = 0;
  while (pos < payload.size()) {
    if (pos % 8 != 0) return ::testing::AssertionFailure() << "record at " << pos << " unaligned";
    Dirent d;
    size_t head = plus ? sizeof(k::fuse_direntplus) : sizeof(k::fuse_dirent);
    if (payload.size() - pos < head)
      return ::testing::AssertionFailure() << "truncated record header at " << pos;
    k::fuse_dirent de;
    if (plus) {
      k::fuse_direntplus dp;
      std::memcpy(&dp, payload.data() + pos, sizeof dp);
      de = dp.dirent;
      d.entry = dp.entry_out;
    } else {
      std::memcpy(&de, payload.data() + pos, sizeof de);
    }
    if (de.namelen == 0 || de.namelen > 255)
      return ::testing::AssertionFailure() << "bad namelen " << de.namelen << " at " << pos;
    size_t rec = plus ? k::direntplus_size(de.namelen) : k::dirent_size(de.namelen);
    if (payload.size() - pos < rec)
      return ::testing::AssertionFailure() << "record at " << pos << " runs past the payload";
    d.ino = de.ino;
    d.off = de.off;
    d.type = de.type;
    d.name.assign(payload.data() + pos + head, de.namelen);
    if (d.name.find('\0') != std::string::npos || d.name.find('/') != std::string::npos)
      return ::testing::AssertionFailure() << "name with NUL or '/' at " << pos;
    for (size_t i = pos + head + de.namelen; i < pos + rec; ++i)
      if (payload[i] != '\0')
        return ::testing::AssertionFailure() << "non-zero padding after \"" << d.name << "\"";
    out->push_back(std::move(d));
    pos += rec;
  }
  return ::testing::AssertionSuccess();
}

// ---- a session over a passthrough backend --------------------------------------------------

// Owns a temp dir whose "src" subdirectory is the PassthroughFs source (so tests can keep
// files outside the served tree), the backend, a RecordingTransport and the Session.
// Options of a harness whose every request is answered before handle() returns: requests
// that may block are not moved to the offload pool (queue balancing has tests of its own).
inline SessionOptions serial_options() {
  SessionOptions o;
  o.queue_balancing = false;
  return o;
}

class SessionHarness {
 public:
  explicit SessionHarness(SessionOptions opts = serial_options(), efuse::fs::Policy policy = {})
      : opts_(opts) {
    // INIT and malformed requests log at info/warning; keep test output readable.
    saved_log_level_ = efuse::log::level();
    efuse::log::set_level(efuse::log::Level::Error);
    src_ = tmp_ / "src";
    if (::mkdir(src_.c_str(), 0755) != 0) ADD_FAILURE() << "mkdir " << src_;
    fs_ = std::make_unique<efuse::fs::passthrough::PassthroughFs>(src_, policy);
    session_ = std::make_unique<Session>(*fs_, opts_);
    session_->connect(connection_);
    scratch_.resize(opts_.max_write + 4096);
  }
  ~SessionHarness() {
    session_->shutdown();
    efuse::log::set_level(saved_log_level_);
  }
  SessionHarness(const SessionHarness&) = delete;
  SessionHarness& operator=(const SessionHarness&) = delete;

  Session& session() { return *session_; }
  RecordingTransport& transport() { return transport_; }
  RecordingConnection& connection() { return connection_; }
  efuse::fs::passthrough::PassthroughFs& fs() { return *fs_; }
  const TempDir& tmp() const { return tmp_; }
  // A path inside the served (source) directory.
  std::string src(const std::string& rel = "") const { return rel.empty() ? src_ : src_ + "/" + rel; }
  uint64_t next_unique() { return next_unique_++; }

  // Hands the session one raw request buffer; returns every message it sent meanwhile.
  std::vector<std::string> handle_raw(std::string_view request) {
    session_->handle(std::span<const char>(request.data(), request.size()), transport_,
                     std::span<char>(scratch_));
    return transport_.take();
  }

  // Sends one request and expects exactly one reply carrying the request's unique. Replies
  // to other requests sent meanwhile (a lock waiter answering from its own thread) are
  // kept for take_stray().
  Reply call(uint32_t opcode, uint64_t nodeid, std::string_view body) {
    uint64_t unique = next_unique();
    auto sent = handle_raw(make_request(opcode, nodeid, unique, body));
    std::vector<Reply> mine;
    for (const std::string& m : sent) {
      Reply r = parse_reply(m);
      (r.hdr.unique == unique ? mine : stray_).push_back(r);
    }
    if (mine.size() != 1) {
      ADD_FAILURE() << "opcode " << opcode << " got " << mine.size() << " replies, want 1";
      return Reply{};
    }
    return mine[0];
  }
  // Replies call() set aside because they answered other requests.
  std::vector<Reply> take_stray() {
    std::vector<Reply> out;
    out.swap(stray_);
    return out;
  }
  Reply call(k::Opcode op, uint64_t nodeid, std::string_view body) {
    return call(code(op), nodeid, body);
  }
  // FORGET, BATCH_FORGET and INTERRUPT: the kernel waits for no reply, so none may come.
  void call_no_reply(k::Opcode op, uint64_t nodeid, std::string_view body) {
    auto sent = handle_raw(make_request(code(op), nodeid, next_unique(), body));
    EXPECT_TRUE(sent.empty()) << "opcode " << code(op) << " must not be answered";
  }

  Reply init(uint64_t flags = kKernelFlags, uint32_t minor = k::kMinorVersion) {
    return call(k::Opcode::Init, 0, init_body(k::kVersion, minor, flags));
  }

  // Conveniences that expect success.
  k::fuse_entry_out lookup(uint64_t parent, std::string_view name) {
    Reply r = call(k::Opcode::Lookup, parent, cstr(name));
    EXPECT_EQ(r.error(), 0) << "lookup " << name;
    return r.as<k::fuse_entry_out>();
  }
  k::fuse_attr getattr(uint64_t nodeid) {
    Reply r = call(k::Opcode::Getattr, nodeid, pod(k::fuse_getattr_in{}));
    EXPECT_EQ(r.error(), 0) << "getattr " << nodeid;
    return r.as<k::fuse_attr_out>().attr;
  }
  uint64_t open(uint64_t nodeid, uint32_t flags) {
    Reply r = call(k::Opcode::Open, nodeid, pod(k::fuse_open_in{flags, 0}));
    EXPECT_EQ(r.error(), 0) << "open " << nodeid;
    return r.as<k::fuse_open_out>().fh;
  }
  uint64_t opendir(uint64_t nodeid) {
    Reply r = call(k::Opcode::Opendir, nodeid, pod(k::fuse_open_in{O_RDONLY, 0}));
    EXPECT_EQ(r.error(), 0) << "opendir " << nodeid;
    return r.as<k::fuse_open_out>().fh;
  }
  void release(uint64_t nodeid, uint64_t fh) {
    EXPECT_EQ(call(k::Opcode::Release, nodeid, release_body(fh)).error(), 0);
  }

 private:
  efuse::log::Level saved_log_level_;
  SessionOptions opts_;
  TempDir tmp_;
  std::string src_;
  std::unique_ptr<efuse::fs::passthrough::PassthroughFs> fs_;
  RecordingTransport transport_;
  RecordingConnection connection_;
  std::unique_ptr<Session> session_;
  std::vector<char> scratch_;
  std::vector<Reply> stray_;
  uint64_t next_unique_ = 1;
};

}  // namespace fuse::testing

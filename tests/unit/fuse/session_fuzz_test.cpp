// Deterministic fuzzing of fuse::Session over a PassthroughFs on a temp directory.
//
// 200,000 requests (EFUSE_FUZZ_ITERATIONS overrides; EFUSE_FUZZ_SEED changes the seed) mixing
// well-formed bodies with random field values, random bytes, truncated bodies and broken
// headers, over nodeids the session handed out, small numbers and bogus ones. Asserted for
// every request: no crash, at most one reply (exactly one where the protocol wants one), each
// reply well-formed and carrying the request's unique, success payloads of the right size,
// ESTALE for bogus nodeids; at the end no descriptor leaked.
//
// What the fuzzer must never do, and why:
// - Random file handles. The passthrough backend uses the backing fd as the file handle, so
//   READ/WRITE/RELEASE/FSYNC/FLUSH/FALLOCATE/LSEEK/COPY_FILE_RANGE/SETATTR(FATTR_FH)/
//   GETATTR(GETATTR_FH)/locks with a random fh would write to, seek, truncate or close this
//   process's own descriptors (stdout, gtest's files). File handles are either ones the
//   session returned from OPEN/CREATE, or numbers whose low 32 bits (the backend casts fh to
//   int) are >= 100000 or negative, which no process here has open. Random-byte bodies get
//   their fh fields overwritten the same way. Directory handles are keys of a map, so they
//   may be anything.
// - Devices and FIFOs. MKNOD gets only regular-file modes: running as root, a block device
//   node opened by the fuzzer and then written through its (legitimately returned) handle
//   would write to a real disk; a FIFO would block OPEN forever.
// - Leaving the temp tree. ".." is rewritten in every body because the backend lets a
//   LOOKUP of ".." escape (see DotAndDotDotNamesCannotLeaveTheSourceTree), and symlink
//   targets lose their '/' because CREATE follows a symlink at the final component (see
//   passthrough_test.cpp, CreateDoesNotFollowASymlinkOutOfTheTree).
// - Filling the disk. FALLOCATE and COPY_FILE_RANGE lengths are capped at 64 KiB.
// - Locking itself out. Modes given by SETATTR/MKDIR keep u+rwx so the tree stays usable
//   and removable without root.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "fuse/opcodes.h"
#include "fuse/session.h"
#include "session_harness.h"

namespace fuse::testing {
namespace {

using Op = k::Opcode;

// SplitMix64: the same sequence everywhere (std::*_distribution is implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }
  bool percent(uint64_t p) { return below(100) < p; }
  std::string bytes(size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(next());
    return s;
  }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }

 private:
  uint64_t s_;
};

size_t env_or(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : fallback;
}

size_t open_fd_count() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return 0;
  while (struct dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the directory stream's own descriptor
}

constexpr uint64_t kBogusBase = 1ULL << 40;  // nodeids the session can never have issued

const std::vector<uint32_t> kOpcodes = [] {
  std::vector<uint32_t> v;
  for (uint32_t op = 1; op <= k::kMaxOpcode; ++op)
    if (op != 7 && op != 19) v.push_back(op);
  for (uint32_t op : {0u, 7u, 19u, 54u, 4096u, 0xffffffffu}) v.push_back(op);
  return v;
}();

// Where each request carries file handles that index real descriptors.
std::vector<size_t> fd_fields(uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::Getattr: return {offsetof(k::fuse_getattr_in, fh)};
    case Op::Setattr: return {offsetof(k::fuse_setattr_in, fh)};
    case Op::Read: case Op::Write: case Op::Release: case Op::Flush: case Op::Fsync:
    case Op::Getlk: case Op::Setlk: case Op::Setlkw: case Op::Fallocate: case Op::Lseek:
      return {0};
    case Op::CopyFileRange:
      return {offsetof(k::fuse_copy_file_range_in, fh_in),
              offsetof(k::fuse_copy_file_range_in, fh_out)};
    default: return {};
  }
}

// Operations that must answer ESTALE for an unknown nodeid given a well-formed body.
bool nodeid_checked(uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::Lookup: case Op::Setattr: case Op::Readlink: case Op::Symlink: case Op::Mknod:
    case Op::Mkdir: case Op::Unlink: case Op::Rmdir: case Op::Rename: case Op::Rename2:
    case Op::Link: case Op::Open: case Op::Create: case Op::Opendir: case Op::Statfs:
    case Op::Access: case Op::Setxattr: case Op::Getxattr: case Op::Listxattr:
    case Op::Removexattr: case Op::Getlk: case Op::Setlk:
      return true;
    default: return false;
  }
}

template <class T>
void put(std::string& body, size_t off, const T& v) {
  if (body.size() >= off + sizeof v) std::memcpy(body.data() + off, &v, sizeof v);
}
template <class T>
T get(const std::string& body, size_t off) {
  T v{};
  if (body.size() >= off + sizeof v) std::memcpy(&v, body.data() + off, sizeof v);
  return v;
}

class Fuzzer {
 public:
  Fuzzer(SessionHarness& h, uint64_t seed) : h_(h), rng_(seed) {}

  // Runs `n` requests; stops at the first one that fails an expectation.
  void run(size_t n) {
    for (size_t i = 0; i < n; ++i) {
      one(i);
      if (::testing::Test::HasFailure()) {
        ADD_FAILURE() << "fuzz request #" << i << " (" << opcode_name(last_op_)
                      << ") failed; request bytes: " << hex(last_request_);
        return;
      }
    }
  }

  // Answers every outstanding SETLKW (session shutdown) and gives back all open handles.
  void finish() {
    h_.session().shutdown();
    collect_async(h_.transport().take());
    EXPECT_TRUE(pending_setlkw_.empty()) << pending_setlkw_.size() << " SETLKW never answered";
    EXPECT_TRUE(pending_blocking_.empty())
        << pending_blocking_.size() << " offloaded FSYNC never answered";
    for (uint64_t fh : file_fhs_)
      EXPECT_EQ(h_.call(Op::Release, k::kRootId, release_body(fh)).error(), 0);
    for (uint64_t fh : dir_fhs_)
      EXPECT_EQ(h_.call(Op::Releasedir, k::kRootId, release_body(fh)).error(), 0);
    file_fhs_.clear();
    dir_fhs_.clear();
  }

  std::map<std::string, size_t> outcome_counts;  // "opcode:errno" → count, for the summary
  size_t async_replies = 0;

 private:
  enum class Shape { Valid, RandomBytes, Truncated };

  // ---- generators ----------------------------------------------------------------------
  uint64_t nodeid() {
    uint64_t p = rng_.below(100);
    if (p < 55 && !nodeids_.empty()) return rng_.pick(nodeids_);
    if (p < 70) return k::kRootId;
    if (p < 85) return rng_.below(64);
    return kBogusBase | rng_.below(1ULL << 40);
  }
  // A handle that is not a descriptor of this process: low 32 bits >= 100000 as an int, or
  // negative; high bits random (the backend truncates to int).
  uint64_t safe_fh() {
    uint64_t high = rng_.percent(50) ? (rng_.next() & 0xffffffff00000000ULL) : 0;
    uint64_t low = rng_.percent(80) ? 100000 + rng_.below(0x7fffffffULL - 100000)
                                    : 0x80000000ULL | rng_.below(0x80000000ULL);
    return high | low;
  }
  uint64_t file_fh() {
    if (!file_fhs_.empty() && rng_.percent(70)) {
      auto it = file_fhs_.begin();
      std::advance(it, static_cast<long>(rng_.below(file_fhs_.size())));
      return *it;
    }
    return safe_fh();
  }
  uint64_t dir_fh() {
    if (!dir_fhs_.empty() && rng_.percent(70)) {
      auto it = dir_fhs_.begin();
      std::advance(it, static_cast<long>(rng_.below(dir_fhs_.size())));
      return *it;
    }
    return rng_.percent(50) ? rng_.below(64) : rng_.next();
  }
  std::string name_str() {
    static const std::vector<std::string> dict = {"a", "b", "c", "d", "dir", "file", "x.txt",
                                                  "link", "sub", "zz", ".", "\xc3\xa9t\xc3\xa9"};
    uint64_t p = rng_.below(100);
    if (p < 85) return rng_.pick(dict);
    if (p < 95) {
      std::string s(1 + rng_.below(20), 'a');
      for (char& c : s) c = static_cast<char>('a' + rng_.below(26));
      return s;
    }
    return rng_.bytes(1 + rng_.below(300));  // may hold '/', NUL or be over NAME_MAX
  }
  std::string name() { return cstr(name_str()); }
  std::string xattr_name() {
    static const std::vector<std::string> dict = {"user.a", "user.b", "user.long.name",
                                                  "trusted.t", "security.s",
                                                  "system.posix_acl_access", "bogus", "user."};
    return cstr(rng_.percent(90) ? rng_.pick(dict) : name_str());
  }
  uint32_t mode_bits() { return static_cast<uint32_t>(rng_.below(010000)) | 0700; }
  uint32_t open_flags() {
    static const std::vector<uint32_t> common = {O_RDONLY, O_WRONLY, O_RDWR, O_RDWR | O_TRUNC,
                                                 O_WRONLY | O_APPEND, O_RDONLY | O_DIRECTORY};
    return rng_.percent(70) ? rng_.pick(common) : static_cast<uint32_t>(rng_.next() & 0x7fffff);
  }

  std::string valid_body(uint32_t op) {
    switch (static_cast<Op>(op)) {
      case Op::Lookup: case Op::Unlink: case Op::Rmdir: return name();
      case Op::Forget: return pod(k::fuse_forget_in{1 + rng_.below(3)});
      case Op::Getattr:
        return pod(k::fuse_getattr_in{static_cast<uint32_t>(rng_.below(2)), 0, file_fh()});
      case Op::Setattr: {
        k::fuse_setattr_in in{};
        in.valid = static_cast<uint32_t>(rng_.next()) &
                   (k::kFattrMode | k::kFattrSize | k::kFattrAtime | k::kFattrMtime |
                    k::kFattrFh | k::kFattrAtimeNow | k::kFattrMtimeNow | k::kFattrUid |
                    k::kFattrGid);
        in.fh = file_fh();
        in.size = rng_.below(1 << 20);
        in.atime = rng_.below(2000000000);
        in.mtime = rng_.below(2000000000);
        in.atimensec = static_cast<uint32_t>(rng_.below(1000000000));
        in.mtimensec = static_cast<uint32_t>(rng_.below(1000000000));
        in.mode = mode_bits();
        in.uid = rng_.percent(50) ? getuid() : static_cast<uint32_t>(rng_.below(70000));
        in.gid = rng_.percent(50) ? getgid() : static_cast<uint32_t>(rng_.below(70000));
        return pod(in);
      }
      case Op::Symlink: return name() + cstr(rng_.percent(80) ? name_str() : "target");
      case Op::Mknod:
        return pod(k::fuse_mknod_in{(rng_.percent(50) ? S_IFREG : 0u) | mode_bits(),
                                    static_cast<uint32_t>(rng_.next()), 022, 0}) +
               name();
      case Op::Mkdir: return pod(k::fuse_mkdir_in{mode_bits(), 022}) + name();
      case Op::Rename: return pod(k::fuse_rename_in{nodeid()}) + name() + name();
      case Op::Rename2: {
        static const std::vector<uint32_t> flags = {0, RENAME_NOREPLACE, RENAME_EXCHANGE,
                                                    RENAME_NOREPLACE | RENAME_EXCHANGE, 0xff};
        return pod(k::fuse_rename2_in{nodeid(), rng_.pick(flags), 0}) + name() + name();
      }
      case Op::Link: return pod(k::fuse_link_in{nodeid()}) + name();
      case Op::Open: case Op::Opendir: return pod(k::fuse_open_in{open_flags(), 0});
      case Op::Read:
        return read_body(file_fh(), rng_.percent(90) ? rng_.below(1 << 20) : rng_.next(),
                         static_cast<uint32_t>(rng_.percent(90) ? rng_.below(70000) : rng_.next()));
      case Op::Write:
        return write_body(file_fh(), rng_.percent(95) ? rng_.below(1 << 20) : rng_.next(),
                          rng_.bytes(rng_.below(513)));
      case Op::Release: {
        k::fuse_release_in in{file_fh(), open_flags(), static_cast<uint32_t>(rng_.below(4)),
                              rng_.below(4)};
        return pod(in);
      }
      case Op::Fsync: case Op::Fsyncdir: {
        uint64_t fh = static_cast<Op>(op) == Op::Fsync ? file_fh() : dir_fh();
        return pod(k::fuse_fsync_in{fh, static_cast<uint32_t>(rng_.below(2)), 0});
      }
      case Op::Setxattr: {
        std::string value = rng_.bytes(rng_.below(200));
        k::fuse_setxattr_in in{static_cast<uint32_t>(value.size()),
                               static_cast<uint32_t>(rng_.below(4)), 0, 0};
        return pod(in) + xattr_name() + value;
      }
      case Op::Getxattr:
        return pod(k::fuse_getxattr_in{static_cast<uint32_t>(rng_.percent(30) ? 0 : rng_.below(300)), 0}) +
               xattr_name();
      case Op::Listxattr:
        return pod(k::fuse_getxattr_in{static_cast<uint32_t>(rng_.percent(30) ? 0 : rng_.below(300)), 0});
      case Op::Removexattr: return xattr_name();
      case Op::Flush: {
        k::fuse_flush_in in{};
        in.fh = file_fh();
        in.lock_owner = rng_.below(4);
        return pod(in);
      }
      case Op::Init: return init_body(7, 45, rng_.next());
      case Op::Readdir: case Op::Readdirplus:
        return read_body(dir_fh(),
                         rng_.percent(60) ? 0 : (rng_.percent(50) && !dir_offs_.empty() ? rng_.pick(dir_offs_) : rng_.next()),
                         static_cast<uint32_t>(rng_.percent(95) ? rng_.below(8192) : rng_.next()));
      case Op::Releasedir: return release_body(dir_fh());
      case Op::Getlk: case Op::Setlk: case Op::Setlkw: {
        static const std::vector<uint32_t> types = {F_RDLCK, F_WRLCK, F_UNLCK, 7};
        uint64_t start = rng_.below(1000);
        uint64_t end = rng_.percent(50) ? INT64_MAX : start + rng_.below(1000);
        if (rng_.percent(5)) end = rng_.next();
        k::fuse_lk_in in = {};
        in.fh = file_fh();
        in.owner = rng_.below(4);
        in.lk = {start, end, rng_.pick(types), static_cast<uint32_t>(rng_.below(100))};
        in.lk_flags = rng_.percent(20) ? k::kLkFlock : 0;
        return pod(in);
      }
      case Op::Access: return pod(k::fuse_access_in{static_cast<uint32_t>(rng_.below(8)), 0});
      case Op::Create:
        return pod(k::fuse_create_in{open_flags() | O_CREAT, S_IFREG | mode_bits(), 022, 0}) +
               name();
      case Op::Interrupt: {
        uint64_t u = !pending_setlkw_.empty() && rng_.percent(70) ? *pending_setlkw_.begin()
                                                                  : rng_.below(next_unique_ + 10);
        return pod(k::fuse_interrupt_in{u});
      }
      case Op::BatchForget: {
        uint32_t count = static_cast<uint32_t>(rng_.below(5));
        uint32_t present = rng_.percent(80) ? count : static_cast<uint32_t>(rng_.below(5));
        std::string b = pod(k::fuse_batch_forget_in{count, 0});
        for (uint32_t i = 0; i < present; ++i)
          b += pod(k::fuse_forget_one{nodeid(), 1 + rng_.below(2)});
        return b;
      }
      case Op::Fallocate: {
        static const std::vector<uint32_t> modes = {0, FALLOC_FL_KEEP_SIZE,
                                                    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                                    FALLOC_FL_ZERO_RANGE, 0x7f};
        return pod(k::fuse_fallocate_in{file_fh(), rng_.below(1 << 20), rng_.below(1 << 16),
                                        rng_.pick(modes), 0});
      }
      case Op::Lseek:
        return pod(k::fuse_lseek_in{file_fh(), rng_.below(1 << 20),
                                    static_cast<uint32_t>(rng_.below(6)), 0});
      case Op::CopyFileRange:
        return pod(k::fuse_copy_file_range_in{file_fh(), rng_.below(1 << 20), nodeid(), file_fh(),
                                              rng_.below(1 << 20), rng_.below(1 << 16),
                                              rng_.percent(90) ? 0 : rng_.next()});
      default: return rng_.bytes(rng_.below(64));
    }
  }

  // Makes any body safe to hand to the passthrough backend (see the file comment).
  void make_safe(uint32_t op, std::string& body) {
    for (size_t off : fd_fields(op)) {
      uint64_t fh = get<uint64_t>(body, off);
      if (file_fhs_.count(fh) == 0) put(body, off, safe_fh());
    }
    switch (static_cast<Op>(op)) {
      case Op::Mknod: {
        uint32_t mode = get<uint32_t>(body, 0);
        put<uint32_t>(body, 0, (mode & 07777) | ((mode & S_IFMT) == S_IFREG ? S_IFREG : 0) | 0700);
        break;
      }
      case Op::Mkdir: put<uint32_t>(body, 0, get<uint32_t>(body, 0) | 0700); break;
      case Op::Setattr: {
        size_t at = offsetof(k::fuse_setattr_in, mode);
        put<uint32_t>(body, at, get<uint32_t>(body, at) | 0700);
        break;
      }
      case Op::Symlink: std::replace(body.begin(), body.end(), '/', '_'); break;
      case Op::Fallocate:
        put<uint64_t>(body, offsetof(k::fuse_fallocate_in, offset),
                      get<uint64_t>(body, offsetof(k::fuse_fallocate_in, offset)) % (1 << 20));
        put<uint64_t>(body, offsetof(k::fuse_fallocate_in, length),
                      get<uint64_t>(body, offsetof(k::fuse_fallocate_in, length)) % (1 << 16));
        break;
      case Op::CopyFileRange:
        put<uint64_t>(body, offsetof(k::fuse_copy_file_range_in, len),
                      get<uint64_t>(body, offsetof(k::fuse_copy_file_range_in, len)) % (1 << 16));
        break;
      default: break;
    }
    for (size_t i = 1; i < body.size(); ++i)
      if (body[i - 1] == '.' && body[i] == '.') body[i] = '_';
  }

  // ---- one request ---------------------------------------------------------------------
  void one(size_t /*i*/) {
    uint32_t op = rng_.pick(kOpcodes);
    Shape shape = rng_.percent(55) ? Shape::Valid
                  : rng_.percent(60) ? Shape::RandomBytes : Shape::Truncated;
    std::string body;
    if (shape == Shape::RandomBytes) {
      body = rng_.bytes(rng_.below(513));
    } else {
      body = valid_body(op);
      if (shape == Shape::Truncated) {
        if (!body.empty() && rng_.percent(80)) body.resize(rng_.below(body.size()));
        else body += rng_.bytes(1 + rng_.below(32));  // trailing garbage
      }
    }
    make_safe(op, body);

    uint64_t node = nodeid();
    uint64_t unique = next_unique_++;
    k::fuse_in_header hdr{};
    hdr.len = static_cast<uint32_t>(sizeof hdr + body.size());
    hdr.opcode = op;
    hdr.unique = unique;
    hdr.nodeid = node;
    hdr.uid = rng_.percent(90) ? getuid() : static_cast<uint32_t>(rng_.below(70000));
    hdr.gid = rng_.percent(90) ? getgid() : static_cast<uint32_t>(rng_.below(70000));
    hdr.pid = static_cast<uint32_t>(rng_.below(1 << 22));
    bool header_ok = true;
    uint64_t p = rng_.below(100);
    if (p < 3) {
      hdr.len = static_cast<uint32_t>(rng_.percent(50) ? rng_.next() : hdr.len + 1 + rng_.below(8));
      header_ok = hdr.len == sizeof hdr + body.size();
    } else if (p < 6) {
      hdr.total_extlen = static_cast<uint16_t>(rng_.below(4));
      header_ok = hdr.total_extlen * 8u <= body.size();
      // The extension bytes are cut from the end of the body.
      if (header_ok) shape = Shape::Truncated;
    }
    std::string req = pod(hdr) + body;
    bool too_short = false;
    if (rng_.percent(1)) {
      req.resize(rng_.below(sizeof hdr));
      too_short = true;
    }
    last_op_ = op;
    last_request_ = req;

    uint64_t decode_errors_before = h_.session().decode_errors();
    auto sent = h_.handle_raw(req);
    std::vector<Reply> mine;
    std::vector<std::string> others;
    for (const std::string& m : sent) {
      k::fuse_out_header oh{};
      if (m.size() >= sizeof oh) std::memcpy(&oh, m.data(), sizeof oh);
      if (!too_short && oh.unique == unique) mine.push_back(parse_reply(m));
      else others.push_back(m);
    }
    collect_async(others);

    if (too_short) {
      EXPECT_TRUE(mine.empty());
      return count(op, "dropped");
    }
    if (!header_ok) {
      ASSERT_EQ(mine.size(), 1u) << "inconsistent header";
      EXPECT_EQ(mine[0].error(), EIO);
      return count(op, "bad-header");
    }
    bool no_reply = op == code(Op::Forget) || op == code(Op::BatchForget) ||
                    op == code(Op::Interrupt);
    if (no_reply) {
      EXPECT_TRUE(mine.empty()) << "FORGET/BATCH_FORGET/INTERRUPT answered";
      return count(op, "none");
    }
    // SETLKW waits for the lock; a non-blocking flock (SETLK with FUSE_LK_FLOCK) waits a
    // grace for a holder whose FLUSH came but whose RELEASE has not (Session::do_setlk).
    bool may_wait = op == code(Op::Setlkw) ||
                    (op == code(Op::Setlk) && body.size() >= sizeof(k::fuse_lk_in) &&
                     (get<k::fuse_lk_in>(body, 0).lk_flags & k::kLkFlock));
    if (may_wait && mine.empty()) {
      pending_setlkw_.insert(unique);
      return count(op, "waiting");
    }
    // FSYNC and FSYNCDIR may be served on a thread of their own (queue balancing,
    // accel/offload.h), which answers later.
    bool may_offload = op == code(Op::Fsync) || op == code(Op::Fsyncdir);
    if (may_offload && mine.empty()) {
      pending_blocking_.insert(unique);
      return count(op, "offloaded");
    }
    ASSERT_EQ(mine.size(), 1u) << "want exactly one reply";
    const Reply& r = mine[0];
    count(op, std::to_string(r.error()));

    if (op == code(Op::Init)) {
      EXPECT_EQ(r.error(), EIO);
    }
    if (op == 0 || op == 7 || op == 19 || op > k::kMaxOpcode) {
      EXPECT_EQ(r.error(), ENOSYS);
    }
    if (shape == Shape::Valid && node >= kBogusBase && nodeid_checked(op)) {
      bool by_fh = (op == code(Op::Getlk) || op == code(Op::Setlk)) &&
                   (get<uint32_t>(body, offsetof(k::fuse_lk_in, lk_flags)) & k::kLkFlock);
      // A random name may still be malformed ('/' or empty): then EINVAL, counted.
      bool decode_failed = h_.session().decode_errors() > decode_errors_before;
      if (!by_fh && !decode_failed) {
        EXPECT_EQ(r.error(), ESTALE) << "bogus nodeid " << node;
      }
    }
    if (r.error() == 0) check_success(op, body, r);
  }

  // Success payloads have the size the kernel expects; handles and nodeids are remembered.
  void check_success(uint32_t op, const std::string& body, const Reply& r) {
    const size_t n = r.payload.size();
    switch (static_cast<Op>(op)) {
      case Op::Lookup: case Op::Mknod: case Op::Mkdir: case Op::Symlink: case Op::Link: {
        ASSERT_EQ(n, sizeof(k::fuse_entry_out));
        auto e = r.as<k::fuse_entry_out>();
        if (e.nodeid != 0) {
          remember_nodeid(e.nodeid);
        } else {
          EXPECT_EQ(op, code(Op::Lookup)) << "nodeid 0 outside a negative lookup";
        }
        break;
      }
      case Op::Getattr: case Op::Setattr: ASSERT_EQ(n, sizeof(k::fuse_attr_out)); break;
      case Op::Readlink: EXPECT_GT(n, 0u); EXPECT_LE(n, 4096u); break;
      case Op::Open: case Op::Opendir: {
        ASSERT_EQ(n, sizeof(k::fuse_open_out));
        auto o = r.as<k::fuse_open_out>();
        if (static_cast<Op>(op) == Op::Open) {
          EXPECT_TRUE(file_fhs_.insert(o.fh).second) << "handle " << o.fh << " handed out twice";
        } else {
          EXPECT_TRUE(dir_fhs_.insert(o.fh).second) << "dir handle handed out twice";
        }
        break;
      }
      case Op::Create: {
        ASSERT_EQ(n, sizeof(k::fuse_entry_out) + sizeof(k::fuse_open_out));
        auto e = r.as<k::fuse_entry_out>();
        EXPECT_NE(e.nodeid, 0u);
        remember_nodeid(e.nodeid);
        auto o = r.as<k::fuse_open_out>(sizeof(k::fuse_entry_out));
        EXPECT_TRUE(file_fhs_.insert(o.fh).second) << "handle " << o.fh << " handed out twice";
        break;
      }
      case Op::Read: {
        auto in = get<k::fuse_read_in>(body, 0);
        EXPECT_LE(n, in.size);
        break;
      }
      case Op::Write: {
        ASSERT_EQ(n, sizeof(k::fuse_write_out));
        EXPECT_LE(r.as<k::fuse_write_out>().size, get<k::fuse_write_in>(body, 0).size);
        break;
      }
      case Op::Statfs: EXPECT_EQ(n, sizeof(k::fuse_statfs_out)); break;
      case Op::Release:
        EXPECT_EQ(n, 0u);
        file_fhs_.erase(get<k::fuse_release_in>(body, 0).fh);
        break;
      case Op::Releasedir:
        EXPECT_EQ(n, 0u);
        dir_fhs_.erase(get<k::fuse_release_in>(body, 0).fh);
        break;
      case Op::Getxattr: case Op::Listxattr: {
        uint32_t size = get<k::fuse_getxattr_in>(body, 0).size;
        if (size == 0) {
          EXPECT_EQ(n, sizeof(k::fuse_getxattr_out));
        } else {
          EXPECT_LE(n, size);
        }
        break;
      }
      case Op::Readdir: case Op::Readdirplus: {
        bool plus = static_cast<Op>(op) == Op::Readdirplus;
        EXPECT_LE(n, get<k::fuse_read_in>(body, 0).size);
        std::vector<Dirent> ents;
        EXPECT_TRUE(parse_dirents(r.payload, plus, &ents));
        for (const Dirent& d : ents) {
          if (dir_offs_.size() < 256) dir_offs_.push_back(d.off);
          if (plus && d.entry.nodeid != 0) remember_nodeid(d.entry.nodeid);
        }
        break;
      }
      case Op::Getlk: EXPECT_EQ(n, sizeof(k::fuse_lk_out)); break;
      case Op::Lseek: EXPECT_EQ(n, sizeof(k::fuse_lseek_out)); break;
      case Op::CopyFileRange: {
        ASSERT_EQ(n, sizeof(k::fuse_write_out));
        EXPECT_LE(r.as<k::fuse_write_out>().size,
                  get<k::fuse_copy_file_range_in>(body, 0).len);
        break;
      }
      default: EXPECT_EQ(n, 0u) << "unexpected payload"; break;
    }
  }

  void remember_nodeid(uint64_t id) {
    EXPECT_LT(id, kBogusBase);
    if (known_.insert(id).second) nodeids_.push_back(id);
  }

  // Replies to earlier SETLKW (and waiting flock SETLK) requests, sent from waiter threads:
  // one each, at most.
  void collect_async(const std::vector<std::string>& msgs) {
    for (const std::string& m : msgs) {
      Reply r = parse_reply(m);
      if (pending_blocking_.erase(r.hdr.unique) == 1) {
        // An offloaded FSYNC or FSYNCDIR: one reply, with an errno the backend can give.
        EXPECT_TRUE(r.error() == 0 || r.error() == EBADF || r.error() == EINVAL ||
                    r.error() == EIO || r.error() == EROFS || r.error() == ESTALE ||
                    r.error() == ENOSYS)
            << "FSYNC answered with errno " << r.error();
        ++async_replies;
        continue;
      }
      EXPECT_EQ(pending_setlkw_.erase(r.hdr.unique), 1u)
          << "reply for unique " << r.hdr.unique << " that no pending SETLKW expects";
      // ESTALE: the fuzzer forgets nodes freely, and a waiter whose retry finds its node
      // gone answers so (a kernel never forgets an inode with a lock request pending).
      EXPECT_TRUE(r.error() == 0 || r.error() == EINTR || r.error() == EBADF ||
                  r.error() == ENOLCK || r.error() == EINVAL || r.error() == EDEADLK ||
                  r.error() == EAGAIN || r.error() == ESTALE)
          << "SETLKW answered with errno " << r.error();
      ++async_replies;
    }
  }

  void count(uint32_t op, const std::string& outcome) {
    ++outcome_counts[std::string(opcode_name(op)) + ":" + outcome];
  }

  static std::string hex(const std::string& s) {
    static const char* d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s.substr(0, 600)) {
      out.push_back(d[c >> 4]);
      out.push_back(d[c & 15]);
    }
    return out;
  }

  SessionHarness& h_;
  Rng rng_;
  uint64_t next_unique_ = 1000;
  std::vector<uint64_t> nodeids_ = {k::kRootId};
  std::set<uint64_t> known_ = {k::kRootId};
  std::set<uint64_t> file_fhs_;
  std::set<uint64_t> dir_fhs_;
  std::vector<uint64_t> dir_offs_;
  std::set<uint64_t> pending_setlkw_;
  std::set<uint64_t> pending_blocking_;  // offloaded FSYNC / FSYNCDIR not answered yet
  uint32_t last_op_ = 0;
  std::string last_request_;
};

TEST(SessionFuzz, RandomRequestsNeverCrashAndGetAtMostOneWellFormedReply) {
  const size_t iterations = env_or("EFUSE_FUZZ_ITERATIONS", 200000);
  const uint64_t seed = env_or("EFUSE_FUZZ_SEED", 0x5eed0f0e);
  SCOPED_TRACE("EFUSE_FUZZ_SEED=" + std::to_string(seed));

  size_t fds_before = open_fd_count();
  std::map<std::string, size_t> outcomes;
  size_t async = 0;
  {
    auto h = std::make_unique<SessionHarness>();
    ASSERT_EQ(h->init().error(), 0);
    for (const char* f : {"a", "b", "file"})
      ASSERT_TRUE(efuse::testing::write_file(h->src(f), std::string(100, 'q')));
    ASSERT_EQ(::mkdir(h->src("dir").c_str(), 0755), 0);
    ASSERT_TRUE(efuse::testing::write_file(h->src("dir/c"), "inner"));

    auto start = std::chrono::steady_clock::now();
    Fuzzer fuzz(*h, seed);
    fuzz.run(iterations);
    fuzz.finish();
    outcomes = fuzz.outcome_counts;
    async = fuzz.async_replies;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start).count();
    std::printf("fuzz: %zu requests in %lld ms, %zu inodes, %llu decode errors, %zu async "
                "SETLKW replies\n",
                iterations, static_cast<long long>(ms), h->fs().backend_stats().inodes,
                static_cast<unsigned long long>(h->session().decode_errors()), async);
    EXPECT_GT(h->session().decode_errors(), iterations / 10);
    EXPECT_GT(h->fs().backend_stats().inodes, 3u) << "the fuzzer reached real entries";
  }
  EXPECT_EQ(open_fd_count(), fds_before) << "descriptors leaked";

  // The fuzzer must have exercised successes, not only rejections.
  size_t successes = 0;
  for (const auto& [key, n] : outcomes)
    if (key.size() > 2 && key.compare(key.size() - 2, 2, ":0") == 0) successes += n;
  EXPECT_GT(successes, iterations / 20);
  for (const char* must : {"lookup:0", "create:0", "write:0", "read:0", "readdirplus:0",
                           "release:0", "mkdir:0", "setxattr:0"})
    EXPECT_GT(outcomes[must], 0u) << must << " never succeeded";
  if (std::getenv("EFUSE_FUZZ_VERBOSE") != nullptr)
    for (const auto& [key, n] : outcomes) std::printf("  %-28s %zu\n", key.c_str(), n);
}

}  // namespace
}  // namespace fuse::testing

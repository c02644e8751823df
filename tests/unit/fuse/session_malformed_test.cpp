// fuse::Session against truncated and malformed requests: every request gets exactly one
// reply carrying an errno (none for FORGET, BATCH_FORGET, INTERRUPT), nothing is read past
// the buffer, and decode failures are counted.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "fuse/opcodes.h"
#include "fuse/session.h"
#include "session_harness.h"

namespace fuse::testing {
namespace {

using efuse::testing::write_file;
using k::kRootId;
using Op = k::Opcode;

// A descriptor number no test process has open: file handles in these requests must never
// reach a real fd (the passthrough backend uses the backing fd as the handle).
constexpr uint64_t kNoFd = 1u << 30;

bool no_reply_op(uint32_t op) {
  return op == code(Op::Forget) || op == code(Op::BatchForget) || op == code(Op::Interrupt);
}

// Opcodes of the protocol efused does not serve (yet): ENOSYS whatever the body.
bool unserved_op(uint32_t op) {
  return op == 0 || op == 7 || op == 19 || op > k::kMaxOpcode || op == code(Op::Bmap) ||
         op == code(Op::Ioctl) || op == code(Op::Poll) || op == code(Op::NotifyReply) ||
         op == code(Op::Setupmapping) || op == code(Op::Removemapping) ||
         op == code(Op::Syncfs) || op == code(Op::Tmpfile) || op == code(Op::Statx) ||
         op == code(Op::CopyFileRange64);
}

// The smallest complete body of each request efused decodes (one name "n<op>" where a name
// is taken, so the complete requests of different opcodes do not collide). Every strict
// prefix of it is malformed.
std::string full_body(uint32_t op) {
  std::string n("n");  // not "n" + to_string(op): GCC 12 -O3 false -Wrestrict
  n += std::to_string(op);
  std::string name = cstr(n);
  switch (static_cast<Op>(op)) {
    case Op::Lookup: case Op::Unlink: case Op::Rmdir: return name;
    case Op::Forget: return pod(k::fuse_forget_in{1});
    case Op::Getattr: return pod(k::fuse_getattr_in{0, 0, kNoFd});
    case Op::Setattr: return pod(k::fuse_setattr_in{});
    case Op::Symlink: return name + cstr("target");
    case Op::Mknod: return pod(k::fuse_mknod_in{S_IFREG | 0644, 0, 0, 0}) + name;
    case Op::Mkdir: return pod(k::fuse_mkdir_in{0755, 0}) + name;
    case Op::Rename: return pod(k::fuse_rename_in{kRootId}) + cstr("from") + cstr("to");
    case Op::Rename2: return pod(k::fuse_rename2_in{kRootId, 0, 0}) + cstr("from") + cstr("to");
    case Op::Link: return pod(k::fuse_link_in{kRootId}) + name;
    case Op::Open: case Op::Opendir: return pod(k::fuse_open_in{O_RDONLY, 0});
    case Op::Read: case Op::Readdir: case Op::Readdirplus: return read_body(kNoFd, 0, 64);
    case Op::Write: return write_body(kNoFd, 0, "data");
    case Op::Release: case Op::Releasedir: return release_body(kNoFd);
    case Op::Fsync: case Op::Fsyncdir: return pod(k::fuse_fsync_in{kNoFd, 0, 0});
    case Op::Setxattr: return setxattr_body("user.n", "v");
    case Op::Getxattr: return getxattr_body("user.n", 0);
    case Op::Listxattr: return pod(k::fuse_getxattr_in{0, 0});
    case Op::Removexattr: return cstr("user.n");
    case Op::Flush: {
      k::fuse_flush_in in{};
      in.fh = kNoFd;
      return pod(in);
    }
    case Op::Init: return init_body(7, 45, kKernelFlags);
    case Op::Getlk: case Op::Setlk: case Op::Setlkw: return lk_body(kNoFd, 1, F_RDLCK);
    case Op::Access: return pod(k::fuse_access_in{F_OK, 0});
    case Op::Create: return pod(k::fuse_create_in{O_RDWR, 0644, 0, 0}) + name;
    case Op::Interrupt: return pod(k::fuse_interrupt_in{999999});
    case Op::BatchForget: return pod(k::fuse_batch_forget_in{1, 0}) + pod(k::fuse_forget_one{999999, 1});
    case Op::Fallocate: return pod(k::fuse_fallocate_in{kNoFd, 0, 1, 0, 0});
    case Op::Lseek: return pod(k::fuse_lseek_in{kNoFd, 0, SEEK_SET, 0});
    case Op::CopyFileRange:
      return pod(k::fuse_copy_file_range_in{kNoFd, 0, kRootId, kNoFd, 0, 1, 0});
    default: return "";  // READLINK, STATFS, DESTROY and unserved opcodes: no body
  }
}

class SessionMalformed : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(h.init().error(), 0); }
  uint64_t decode_errors() { return h.session().decode_errors(); }
  SessionHarness h;
};

TEST_F(SessionMalformed, EveryOpcodeCutAtEveryLengthGetsOneErrorReply) {
  std::vector<uint32_t> ops;
  for (uint32_t op = 0; op <= 60; ++op) ops.push_back(op);
  for (uint32_t op : {4096u, 9999u, 0xffffffffu}) ops.push_back(op);
  int cut_requests = 0;
  for (uint32_t op : ops) {
    const std::string full = full_body(op);
    for (size_t len = 0; len <= full.size(); ++len) {
      SCOPED_TRACE(std::string(opcode_name(op)) + " (" + std::to_string(op) + ") body " +
                   std::to_string(len) + "/" + std::to_string(full.size()));
      uint64_t unique = h.next_unique();
      uint64_t errors_before = decode_errors();
      auto sent = h.handle_raw(make_request(op, kRootId, unique, full.substr(0, len)));
      if (no_reply_op(op)) {
        EXPECT_TRUE(sent.empty());
        continue;
      }
      ASSERT_EQ(sent.size(), 1u);
      Reply r = parse_reply(sent[0]);
      EXPECT_EQ(r.hdr.unique, unique);
      if (unserved_op(op)) {
        EXPECT_EQ(r.error(), ENOSYS);
      } else if (op == code(Op::Init)) {
        EXPECT_EQ(r.error(), EIO) << "already initialized";
      } else if (len < full.size()) {
        ++cut_requests;
        EXPECT_EQ(r.error(), EINVAL);
        EXPECT_EQ(decode_errors(), errors_before + 1);
      } else if (r.error() == 0 && (op == code(Op::Open) || op == code(Op::Create))) {
        // The complete request may succeed; give back what it opened.
        size_t at = op == code(Op::Create) ? sizeof(k::fuse_entry_out) : 0;
        auto o = r.as<k::fuse_open_out>(at);
        EXPECT_EQ(h.call(Op::Release, kRootId, release_body(o.fh)).error(), 0);
      } else if (r.error() == 0 && op == code(Op::Opendir)) {
        auto o = r.as<k::fuse_open_out>();
        EXPECT_EQ(h.call(Op::Releasedir, kRootId, release_body(o.fh)).error(), 0);
      }
    }
  }
  EXPECT_GT(cut_requests, 500);
  EXPECT_TRUE(h.session().initialized());
}

// FORGET, INTERRUPT and BATCH_FORGET get no reply, so a truncated one is dropped; it must
// still count as a decode error, like every other malformed body, so a broken peer shows.
TEST_F(SessionMalformed, TruncatedNoReplyRequestsCountAsDecodeErrors) {
  for (Op op : {Op::Forget, Op::Interrupt, Op::BatchForget}) {
    std::string full = full_body(code(op));
    size_t fixed = op == Op::BatchForget ? sizeof(k::fuse_batch_forget_in) : full.size();
    for (size_t len = 0; len < fixed; ++len) {
      SCOPED_TRACE(std::string(opcode_name(code(op))) + " body " + std::to_string(len));
      uint64_t before = decode_errors();
      h.call_no_reply(op, kRootId, full.substr(0, len));
      EXPECT_EQ(decode_errors(), before + 1);
    }
  }
}

TEST_F(SessionMalformed, HeaderLengthMustMatchTheBuffer) {
  std::string req = make_request(code(Op::Getattr), kRootId, 77, pod(k::fuse_getattr_in{}));
  for (int delta : {-1, 1, 100, -16}) {
    SCOPED_TRACE("len off by " + std::to_string(delta));
    std::string bad = req;
    k::fuse_in_header hdr;
    std::memcpy(&hdr, bad.data(), sizeof hdr);
    hdr.len = static_cast<uint32_t>(static_cast<int>(bad.size()) + delta);
    std::memcpy(bad.data(), &hdr, sizeof hdr);
    uint64_t before = decode_errors();
    auto sent = h.handle_raw(bad);
    ASSERT_EQ(sent.size(), 1u);
    Reply r = parse_reply(sent[0]);
    EXPECT_EQ(r.error(), EIO);
    EXPECT_EQ(r.hdr.unique, 77u);
    EXPECT_EQ(decode_errors(), before + 1);
  }
  // Even a FORGET is answered when its header is inconsistent: the kernel cannot be sure
  // what it was.
  std::string forget = make_request(code(Op::Forget), kRootId, 78, pod(k::fuse_forget_in{1}));
  forget.push_back('x');
  auto sent = h.handle_raw(forget);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(parse_reply(sent[0]).error(), EIO);
}

TEST_F(SessionMalformed, ExtensionsMustFitAndAreNotPartOfTheBody) {
  // total_extlen promises 8 bytes of extensions the request does not have.
  std::string req = make_request(code(Op::Getattr), kRootId, 90, "");
  k::fuse_in_header hdr;
  std::memcpy(&hdr, req.data(), sizeof hdr);
  hdr.total_extlen = 1;
  std::memcpy(req.data(), &hdr, sizeof hdr);
  auto sent = h.handle_raw(req);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(parse_reply(sent[0]).error(), EIO);

  // A well-formed body followed by 16 bytes of extensions works.
  ASSERT_TRUE(write_file(h.src("e"), "12345"));
  auto e = h.lookup(kRootId, "e");
  req = make_request(code(Op::Getattr), e.nodeid, 91, pod(k::fuse_getattr_in{}) + std::string(16, '\0'));
  std::memcpy(&hdr, req.data(), sizeof hdr);
  hdr.total_extlen = 2;
  std::memcpy(req.data(), &hdr, sizeof hdr);
  sent = h.handle_raw(req);
  ASSERT_EQ(sent.size(), 1u);
  Reply r = parse_reply(sent[0]);
  ASSERT_EQ(r.error(), 0);
  EXPECT_EQ(r.as<k::fuse_attr_out>().attr.size, 5u);

  // The NUL a name lacks must not be found in the extension area.
  req = make_request(code(Op::Lookup), kRootId, 92, std::string("e") + std::string(8, '\0'));
  std::memcpy(&hdr, req.data(), sizeof hdr);
  hdr.total_extlen = 1;
  std::memcpy(req.data(), &hdr, sizeof hdr);
  sent = h.handle_raw(req);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(parse_reply(sent[0]).error(), EINVAL);
}

TEST_F(SessionMalformed, BufferShorterThanTheHeaderIsDroppedAndCounted) {
  std::string req = make_request(code(Op::Getattr), kRootId, 5, pod(k::fuse_getattr_in{}));
  for (size_t len = 0; len < sizeof(k::fuse_in_header); ++len) {
    uint64_t before = decode_errors();
    EXPECT_TRUE(h.handle_raw(std::string_view(req.data(), len)).empty()) << len;
    EXPECT_EQ(decode_errors(), before + 1);
  }
}

TEST_F(SessionMalformed, BadNamesAreRejected) {
  ASSERT_TRUE(write_file(h.src("f"), ""));
  auto f = h.lookup(kRootId, "f");
  const std::vector<std::string> bad_names = {
      std::string("abc"),             // no NUL before the end of the body
      std::string("\0", 1),           // empty
      std::string("a/b\0", 4),        // '/' would walk out of the directory
      std::string("/\0", 2),
      std::string("/etc/passwd\0", 12),
  };
  for (const std::string& bad : bad_names) {
    SCOPED_TRACE("name \"" + bad.substr(0, bad.find('\0')) + "\" (" + std::to_string(bad.size()) + " bytes)");
    const std::vector<std::pair<Op, std::string>> reqs = {
        {Op::Lookup, bad},
        {Op::Unlink, bad},
        {Op::Rmdir, bad},
        {Op::Mkdir, pod(k::fuse_mkdir_in{0755, 0}) + bad},
        {Op::Mknod, pod(k::fuse_mknod_in{S_IFREG | 0644, 0, 0, 0}) + bad},
        {Op::Create, pod(k::fuse_create_in{O_RDWR, 0644, 0, 0}) + bad},
        {Op::Symlink, bad + cstr("target")},
        {Op::Link, pod(k::fuse_link_in{f.nodeid}) + bad},
        {Op::Rename, pod(k::fuse_rename_in{kRootId}) + bad + cstr("g")},
        {Op::Rename, pod(k::fuse_rename_in{kRootId}) + cstr("f") + bad},
        {Op::Rename2, pod(k::fuse_rename2_in{kRootId, 0, 0}) + bad + cstr("g")},
        {Op::Rename2, pod(k::fuse_rename2_in{kRootId, 0, 0}) + cstr("f") + bad},
    };
    for (const auto& [op, body] : reqs) {
      SCOPED_TRACE("opcode " + std::to_string(code(op)));
      uint64_t before = decode_errors();
      EXPECT_EQ(h.call(op, kRootId, body).error(), EINVAL);
      EXPECT_EQ(decode_errors(), before + 1);
    }
  }
  // Nothing was created or moved.
  EXPECT_EQ(::access(h.src("f").c_str(), F_OK), 0);
  EXPECT_NE(::access(h.src("g").c_str(), F_OK), 0);
  EXPECT_NE(::access(h.src("a").c_str(), F_OK), 0);

  // Xattr names and symlink targets may contain '/', but must be terminated and non-empty.
  for (const std::string& bad : {std::string("user.x"), std::string("\0", 1)}) {
    EXPECT_EQ(h.call(Op::Getxattr, f.nodeid, pod(k::fuse_getxattr_in{0, 0}) + bad).error(), EINVAL);
    EXPECT_EQ(h.call(Op::Removexattr, f.nodeid, bad).error(), EINVAL);
    k::fuse_setxattr_in in{};
    EXPECT_EQ(h.call(Op::Setxattr, f.nodeid, pod(in) + bad).error(), EINVAL);
    EXPECT_EQ(h.call(Op::Symlink, kRootId, cstr("s") + bad).error(), EINVAL);
  }
  EXPECT_NE(::access(h.src("s").c_str(), F_OK), 0);
}

TEST_F(SessionMalformed, SizesBeyondTheBodyAreRejected) {
  ASSERT_TRUE(write_file(h.src("w"), "original"));
  auto w = h.lookup(kRootId, "w");
  uint64_t fh = h.open(w.nodeid, O_RDWR);

  k::fuse_write_in in{};
  in.fh = fh;
  in.size = 9;  // one more than the data present
  uint64_t before = decode_errors();
  EXPECT_EQ(h.call(Op::Write, w.nodeid, pod(in) + "XXXXXXXX").error(), EINVAL);
  in.size = 0xffffffffu;
  EXPECT_EQ(h.call(Op::Write, w.nodeid, pod(in) + "XXXXXXXX").error(), EINVAL);
  EXPECT_EQ(decode_errors(), before + 2);
  EXPECT_EQ(efuse::testing::read_file(h.src("w")), "original") << "nothing written";

  k::fuse_setxattr_in sx{};
  sx.size = 100;
  EXPECT_EQ(h.call(Op::Setxattr, w.nodeid, pod(sx) + cstr("user.v") + "short").error(), EINVAL);

  // Nanoseconds past a second are not a time.
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrMtime;
  sa.mtimensec = 1000000000;
  EXPECT_EQ(h.call(Op::Setattr, w.nodeid, pod(sa)).error(), EINVAL);

  h.release(w.nodeid, fh);
}

// BATCH_FORGET promising more entries than the request holds forgets those present and
// stops at the end of the buffer: the entry lying right after it in memory stays unread.
TEST_F(SessionMalformed, BatchForgetStopsAtTheEndOfTheRequest) {
  for (const char* n : {"a", "b", "c"}) ASSERT_TRUE(write_file(h.src(n), ""));
  uint64_t a = h.lookup(kRootId, "a").nodeid;
  uint64_t b = h.lookup(kRootId, "b").nodeid;
  uint64_t c = h.lookup(kRootId, "c").nodeid;

  std::string req = make_request(code(Op::BatchForget), 0, h.next_unique(),
                                 pod(k::fuse_batch_forget_in{1000, 0}) +
                                     pod(k::fuse_forget_one{a, 1}) + pod(k::fuse_forget_one{b, 1}));
  size_t len = req.size();
  std::string memory = req + pod(k::fuse_forget_one{c, 1});  // beyond the request's end
  uint64_t before = decode_errors();
  EXPECT_TRUE(h.handle_raw(std::string_view(memory.data(), len)).empty());
  EXPECT_EQ(decode_errors(), before + 1);
  EXPECT_EQ(h.call(Op::Getattr, a, pod(k::fuse_getattr_in{})).error(), ESTALE);
  EXPECT_EQ(h.call(Op::Getattr, b, pod(k::fuse_getattr_in{})).error(), ESTALE);
  EXPECT_EQ(h.call(Op::Getattr, c, pod(k::fuse_getattr_in{})).error(), 0) << "read past the end";

  // A huge count over an empty list returns at once.
  h.call_no_reply(Op::BatchForget, 0, pod(k::fuse_batch_forget_in{0xffffffffu, 0}));
  EXPECT_EQ(decode_errors(), before + 2);
}

// The kernel never sends "." or ".." (efused does not grant EXPORT_SUPPORT). Were they
// accepted, a forged LOOKUP(root, "..") would return a nodeid for the directory containing
// the source, and UNLINK/CREATE/RENAME on it would act outside the served tree. They are
// EINVAL at decode.
TEST_F(SessionMalformed, DotAndDotDotNamesCannotLeaveTheSourceTree) {
  ASSERT_TRUE(write_file(h.tmp() / "outside", "precious"));
  struct stat parent;
  ASSERT_EQ(::stat(h.tmp().path().c_str(), &parent), 0);

  Reply r = h.call(Op::Lookup, kRootId, cstr(".."));
  if (r.error() == 0) {
    auto e = r.as<k::fuse_entry_out>();
    EXPECT_NE(e.attr.ino, parent.st_ino) << "LOOKUP(root, \"..\") escaped the source directory";
    if (e.nodeid != 0) h.call(Op::Unlink, e.nodeid, cstr("outside"));
  } else {
    EXPECT_EQ(r.error(), EINVAL);
  }
  EXPECT_EQ(efuse::testing::read_file(h.tmp() / "outside"), "precious");
  for (const char* dots : {".", ".."}) {
    EXPECT_EQ(h.call(Op::Lookup, kRootId, cstr(dots)).error(), EINVAL) << dots;
    EXPECT_EQ(h.call(Op::Mkdir, kRootId, pod(k::fuse_mkdir_in{0755, 0}) + cstr(dots)).error(),
              EINVAL)
        << dots;
  }
}

}  // namespace
}  // namespace fuse::testing

// The session's argument routing, opcode by opcode, over a recording fake Filesystem: every
// field of a request reaches the backend method it belongs to, as that method's parameter
// (the other session tests run over the real passthrough backend, which would hide a
// swapped fh and offset that happen to work).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/xattr.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "fuse/opcodes.h"
#include "session_harness.h"

namespace fuse::testing {
namespace {

namespace fs = efuse::fs;
using efuse::Errno;
using efuse::Result;
using efuse::Status;
using Op = k::Opcode;

std::string fmt(const char* f, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}
std::string str(std::string_view s) { return std::string(s); }
unsigned long long u(uint64_t v) { return v; }

// Records every call as one line of text and answers with a success built from it.
class RecordingFs final : public fs::Filesystem {
 public:
  std::vector<std::string> calls;
  fs::Capabilities caps;

  void init(const fs::Capabilities& c) override { caps = c, calls.push_back("init"); }
  void destroy() override { calls.push_back("destroy"); }
  Result<fs::Entry> lookup(const fs::Context& c, uint64_t p, std::string_view n) override {
    return entry(fmt("lookup uid=%u parent=%llu name=%s", c.uid, u(p), str(n).c_str()));
  }
  void forget(uint64_t ino, uint64_t n) override { calls.push_back(fmt("forget %llu %llu", u(ino), u(n))); }
  Result<fs::Attr> getattr(const fs::Context&, uint64_t ino, const uint64_t* fh) override {
    calls.push_back(fh ? fmt("getattr %llu fh=%llu", u(ino), u(*fh)) : fmt("getattr %llu", u(ino)));
    return fs::Attr{};
  }
  Result<fs::Attr> setattr(const fs::Context& c, uint64_t ino, const fs::SetattrRequest& s) override {
    calls.push_back(fmt("setattr %llu mode=%d:%o uid=%d:%u gid=%d:%u size=%d:%llu fh=%d:%llu "
                        "atime=%d:%lld.%ld mtime=%d:%lld.%ld kill=%d",
                        u(ino), s.set_mode, s.mode, s.set_uid, s.uid, s.set_gid, s.gid,
                        s.set_size, u(s.size), s.has_fh, u(s.fh), s.set_atime,
                        static_cast<long long>(s.atime.tv_sec), s.atime.tv_nsec, s.set_mtime,
                        static_cast<long long>(s.mtime.tv_sec), s.mtime.tv_nsec, c.kill_suidgid));
    return fs::Attr{};
  }
  Result<std::string> readlink(const fs::Context&, uint64_t ino) override {
    calls.push_back(fmt("readlink %llu", u(ino)));
    return std::string("target");
  }
  Result<fs::Entry> symlink(const fs::Context&, uint64_t p, std::string_view n, std::string_view t) override {
    return entry(fmt("symlink %llu %s -> %s", u(p), str(n).c_str(), str(t).c_str()));
  }
  Result<fs::Entry> mknod(const fs::Context& c, uint64_t p, std::string_view n, mode_t m, dev_t d) override {
    return entry(fmt("mknod %llu %s mode=%o rdev=%llu umask=%o", u(p), str(n).c_str(), m, u(d), c.umask));
  }
  Result<fs::Entry> mkdir(const fs::Context& c, uint64_t p, std::string_view n, mode_t m) override {
    return entry(fmt("mkdir %llu %s mode=%o umask=%o", u(p), str(n).c_str(), m, c.umask));
  }
  Status unlink(const fs::Context&, uint64_t p, std::string_view n) override {
    calls.push_back(fmt("unlink %llu %s", u(p), str(n).c_str()));
    return {};
  }
  Status rmdir(const fs::Context&, uint64_t p, std::string_view n) override {
    calls.push_back(fmt("rmdir %llu %s", u(p), str(n).c_str()));
    return {};
  }
  Status rename(const fs::Context&, uint64_t p, std::string_view n, uint64_t np, std::string_view nn,
                uint32_t flags) override {
    calls.push_back(fmt("rename %llu %s -> %llu %s flags=%u", u(p), str(n).c_str(), u(np), str(nn).c_str(), flags));
    return {};
  }
  Result<fs::Entry> link(const fs::Context&, uint64_t ino, uint64_t np, std::string_view nn) override {
    return entry(fmt("link %llu -> %llu %s", u(ino), u(np), str(nn).c_str()));
  }
  Result<fs::OpenInfo> open(const fs::Context& c, uint64_t ino, int flags) override {
    calls.push_back(fmt("open %llu flags=%o kill=%d", u(ino), flags, c.kill_suidgid));
    return fs::OpenInfo{};
  }
  Result<fs::Created> create(const fs::Context& c, uint64_t p, std::string_view n, mode_t m, int flags) override {
    calls.push_back(fmt("create %llu %s mode=%o flags=%o umask=%o kill=%d", u(p), str(n).c_str(), m,
                        flags, c.umask, c.kill_suidgid));
    return fs::Created{};
  }
  Result<size_t> read(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t off, std::span<char> b) override {
    calls.push_back(fmt("read %llu fh=%llu off=%llu size=%zu", u(ino), u(fh), u(off), b.size()));
    return size_t{0};
  }
  Result<size_t> write(const fs::Context& c, uint64_t ino, uint64_t fh, uint64_t off, std::span<const char> d) override {
    calls.push_back(fmt("write %llu fh=%llu off=%llu data=%s kill=%d", u(ino), u(fh), u(off),
                        std::string(d.data(), d.size()).c_str(), c.kill_suidgid));
    return d.size();
  }
  Status flush(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t owner) override {
    calls.push_back(fmt("flush %llu fh=%llu owner=%llu", u(ino), u(fh), u(owner)));
    return {};
  }
  Status release(const fs::Context&, uint64_t ino, uint64_t fh) override {
    calls.push_back(fmt("release %llu fh=%llu", u(ino), u(fh)));
    return {};
  }
  Status fsync(const fs::Context&, uint64_t ino, uint64_t fh, bool datasync) override {
    calls.push_back(fmt("fsync %llu fh=%llu datasync=%d", u(ino), u(fh), datasync));
    return {};
  }
  Result<fs::OpenInfo> opendir(const fs::Context&, uint64_t ino, int flags) override {
    calls.push_back(fmt("opendir %llu flags=%o", u(ino), flags));
    return fs::OpenInfo{};
  }
  Status readdir(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t off, fs::DirSink& s) override {
    calls.push_back(fmt("readdir%s %llu fh=%llu off=%llu", s.plus() ? "plus" : "", u(ino), u(fh), u(off)));
    return {};
  }
  Status releasedir(const fs::Context&, uint64_t ino, uint64_t fh) override {
    calls.push_back(fmt("releasedir %llu fh=%llu", u(ino), u(fh)));
    return {};
  }
  Status fsyncdir(const fs::Context&, uint64_t ino, uint64_t fh, bool datasync) override {
    calls.push_back(fmt("fsyncdir %llu fh=%llu datasync=%d", u(ino), u(fh), datasync));
    return {};
  }
  Result<struct statvfs> statfs(const fs::Context&, uint64_t ino) override {
    calls.push_back(fmt("statfs %llu", u(ino)));
    return (struct statvfs){};
  }
  Status access(const fs::Context&, uint64_t ino, int mask) override {
    calls.push_back(fmt("access %llu mask=%d", u(ino), mask));
    return {};
  }
  Status setxattr(const fs::Context& c, uint64_t ino, std::string_view n, std::span<const char> v, int flags) override {
    calls.push_back(fmt("setxattr %llu %s=%s flags=%d kill_sgid=%d", u(ino), str(n).c_str(),
                        std::string(v.data(), v.size()).c_str(), flags, c.kill_sgid));
    return {};
  }
  Result<size_t> getxattr(const fs::Context&, uint64_t ino, std::string_view n, std::span<char> b) override {
    calls.push_back(fmt("getxattr %llu %s size=%zu", u(ino), str(n).c_str(), b.size()));
    return size_t{0};
  }
  Result<size_t> listxattr(const fs::Context&, uint64_t ino, std::span<char> b) override {
    calls.push_back(fmt("listxattr %llu size=%zu", u(ino), b.size()));
    return size_t{0};
  }
  Status removexattr(const fs::Context&, uint64_t ino, std::string_view n) override {
    calls.push_back(fmt("removexattr %llu %s", u(ino), str(n).c_str()));
    return {};
  }
  Status fallocate(const fs::Context&, uint64_t ino, uint64_t fh, int mode, uint64_t off, uint64_t len) override {
    calls.push_back(fmt("fallocate %llu fh=%llu mode=%d off=%llu len=%llu", u(ino), u(fh), mode, u(off), u(len)));
    return {};
  }
  Result<uint64_t> lseek(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t off, int whence) override {
    calls.push_back(fmt("lseek %llu fh=%llu off=%llu whence=%d", u(ino), u(fh), u(off), whence));
    return off;
  }
  Result<size_t> copy_file_range(const fs::Context&, uint64_t ino_in, uint64_t fh_in, uint64_t off_in,
                                 uint64_t ino_out, uint64_t fh_out, uint64_t off_out, uint64_t len,
                                 uint64_t flags) override {
    calls.push_back(fmt("copy_file_range %llu fh=%llu off=%llu -> %llu fh=%llu off=%llu len=%llu flags=%llu",
                        u(ino_in), u(fh_in), u(off_in), u(ino_out), u(fh_out), u(off_out), u(len), u(flags)));
    return size_t{0};
  }
  Result<fs::Lock> getlk(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t owner, const fs::Lock& l) override {
    calls.push_back(lock_line("getlk", ino, fh, owner, l));
    return l;
  }
  Status setlk(const fs::Context&, uint64_t ino, uint64_t fh, uint64_t owner, const fs::Lock& l) override {
    calls.push_back(lock_line("setlk", ino, fh, owner, l));
    return {};
  }
  Status flock(const fs::Context&, uint64_t ino, uint64_t fh, int op) override {
    calls.push_back(fmt("flock %llu fh=%llu op=%d", u(ino), u(fh), op));
    return {};
  }

 private:
  Result<fs::Entry> entry(std::string line) {
    calls.push_back(std::move(line));
    fs::Entry e;
    e.ino = 77;
    return e;
  }
  static std::string lock_line(const char* what, uint64_t ino, uint64_t fh, uint64_t owner, const fs::Lock& l) {
    return fmt("%s %llu fh=%llu owner=%llu %llu-%llu type=%u pid=%u", what, u(ino), u(fh), u(owner),
               u(l.start), u(l.end), l.type, l.pid);
  }
};

class SessionRouting : public ::testing::Test {
 protected:
  void SetUp() override {
    session_.connect(conn_);
    ASSERT_EQ(send(Op::Init, 0, init_body(k::kVersion, k::kMinorVersion, kKernelFlags)), 0);
  }
  void TearDown() override { session_.shutdown(); }

  // Sends one request; returns its reply's errno (-1: no reply).
  int send(Op op, uint64_t nodeid, const std::string& body) {
    std::string req = make_request(code(op), nodeid, next_unique_++, body);
    session_.handle(std::span<const char>(req.data(), req.size()), transport_,
                    std::span<char>(scratch_));
    auto sent = transport_.take();
    return sent.empty() ? -1 : parse_reply(sent.back()).error();
  }
  // The one call `op` made.
  std::string route(Op op, uint64_t nodeid, const std::string& body, int want_error = 0) {
    fs_.calls.clear();
    EXPECT_EQ(send(op, nodeid, body), want_error) << opcode_name(code(op));
    if (fs_.calls.size() != 1) {
      ADD_FAILURE() << opcode_name(code(op)) << ": " << fs_.calls.size() << " calls";
      return "";
    }
    return fs_.calls[0];
  }

  RecordingFs fs_;
  Session session_{fs_, SessionOptions{.queue_balancing = false}};
  RecordingTransport transport_;
  RecordingConnection conn_;
  std::vector<char> scratch_ = std::vector<char>(SessionOptions{}.max_write + 4096);
  uint64_t next_unique_ = 1;
};

TEST_F(SessionRouting, EveryOpcodeReachesItsMethodWithItsArguments) {
  EXPECT_TRUE(fs_.caps.posix_locks && fs_.caps.flock_locks && fs_.caps.passthrough);
  std::set<uint32_t> covered{code(Op::Init)};
  auto check = [&](Op op, uint64_t nodeid, const std::string& body, const std::string& want,
                   int err = 0) {
    covered.insert(code(op));
    EXPECT_EQ(route(op, nodeid, body, err), want);
  };
  check(Op::Lookup, 5, cstr("abc"), fmt("lookup uid=%u parent=5 name=abc", getuid()));
  check(Op::Forget, 6, pod(k::fuse_forget_in{3}), "forget 6 3", -1);
  {
    std::string b = pod(k::fuse_batch_forget_in{2, 0}) + pod(k::fuse_forget_one{8, 1}) +
                    pod(k::fuse_forget_one{9, 4});
    fs_.calls.clear();
    EXPECT_EQ(send(Op::BatchForget, 0, b), -1);
    EXPECT_EQ(fs_.calls, (std::vector<std::string>{"forget 8 1", "forget 9 4"}));
    covered.insert(code(Op::BatchForget));
  }
  check(Op::Getattr, 7, pod(k::fuse_getattr_in{0, 0, 99}), "getattr 7");
  check(Op::Getattr, 7, pod(k::fuse_getattr_in{k::kGetattrFh, 0, 99}), "getattr 7 fh=99");
  {
    k::fuse_setattr_in s{};
    s.valid = k::kFattrMode | k::kFattrSize | k::kFattrFh | k::kFattrMtime | k::kFattrKillSuidgid;
    s.fh = 11, s.size = 4096, s.mode = 0640, s.uid = 5, s.gid = 6, s.atime = 100, s.mtime = 200;
    s.atimensec = 1, s.mtimensec = 2;
    check(Op::Setattr, 7, pod(s),
          "setattr 7 mode=1:640 uid=0:5 gid=0:6 size=1:4096 fh=1:11 atime=0:100.1 mtime=1:200.2 kill=1");
  }
  check(Op::Readlink, 7, "", "readlink 7");
  check(Op::Symlink, 5, cstr("ln") + cstr("to/there"), "symlink 5 ln -> to/there");
  check(Op::Mknod, 5, pod(k::fuse_mknod_in{S_IFIFO | 0600, 0x102, 022, 0}) + cstr("p"),
        "mknod 5 p mode=10600 rdev=258 umask=22");
  check(Op::Mkdir, 5, pod(k::fuse_mkdir_in{0750, 027}) + cstr("d"), "mkdir 5 d mode=750 umask=27");
  check(Op::Unlink, 5, cstr("f"), "unlink 5 f");
  check(Op::Rmdir, 5, cstr("d"), "rmdir 5 d");
  check(Op::Rename, 5, pod(k::fuse_rename_in{6}) + cstr("a") + cstr("b"), "rename 5 a -> 6 b flags=0");
  check(Op::Rename2, 5, pod(k::fuse_rename2_in{6, RENAME_NOREPLACE, 0}) + cstr("a") + cstr("b"),
        fmt("rename 5 a -> 6 b flags=%u", RENAME_NOREPLACE));
  check(Op::Link, 6, pod(k::fuse_link_in{7}) + cstr("hard"), "link 7 -> 6 hard");
  check(Op::Open, 7, pod(k::fuse_open_in{O_RDWR | O_APPEND, k::kOpenKillSuidgid}),
        fmt("open 7 flags=%o kill=1", O_RDWR | O_APPEND));
  check(Op::Create, 5, pod(k::fuse_create_in{O_WRONLY | O_CREAT, 0644, 002, 0}) + cstr("new"),
        fmt("create 5 new mode=644 flags=%o umask=2 kill=0", O_WRONLY | O_CREAT));
  check(Op::Read, 7, read_body(12, 4096, 100), "read 7 fh=12 off=4096 size=100");
  {
    k::fuse_write_in w{};
    w.fh = 12, w.offset = 8192, w.size = 5, w.write_flags = k::kWriteKillSuidgid;
    check(Op::Write, 7, pod(w) + "hello", "write 7 fh=12 off=8192 data=hello kill=1");
  }
  check(Op::Flush, 7, pod(k::fuse_flush_in{12, 0, 0, 0x55}), "flush 7 fh=12 owner=85");
  check(Op::Release, 7, release_body(12), "release 7 fh=12");
  check(Op::Fsync, 7, pod(k::fuse_fsync_in{12, k::kFsyncFdatasync, 0}), "fsync 7 fh=12 datasync=1");
  check(Op::Opendir, 5, pod(k::fuse_open_in{O_RDONLY | O_DIRECTORY, 0}),
        fmt("opendir 5 flags=%o", O_RDONLY | O_DIRECTORY));
  check(Op::Readdir, 5, read_body(13, 3, 4096), "readdir 5 fh=13 off=3");
  check(Op::Readdirplus, 5, read_body(13, 4, 4096), "readdirplus 5 fh=13 off=4");
  check(Op::Releasedir, 5, release_body(13), "releasedir 5 fh=13");
  check(Op::Fsyncdir, 5, pod(k::fuse_fsync_in{13, 0, 0}), "fsyncdir 5 fh=13 datasync=0");
  check(Op::Statfs, 5, "", "statfs 5");
  check(Op::Access, 7, pod(k::fuse_access_in{R_OK | W_OK, 0}), fmt("access 7 mask=%d", R_OK | W_OK));
  check(Op::Setxattr, 7, setxattr_body("user.k", "val", XATTR_CREATE),
        fmt("setxattr 7 user.k=val flags=%d kill_sgid=0", XATTR_CREATE));
  check(Op::Setxattr, 7,
        setxattr_body("system.posix_acl_access", "acl", 0, k::kSetxattrAclKillSgid),
        "setxattr 7 system.posix_acl_access=acl flags=0 kill_sgid=1");
  check(Op::Getxattr, 7, getxattr_body("user.k", 64), "getxattr 7 user.k size=64");
  check(Op::Listxattr, 7, pod(k::fuse_getxattr_in{32, 0}), "listxattr 7 size=32");
  check(Op::Removexattr, 7, cstr("user.k"), "removexattr 7 user.k");
  check(Op::Fallocate, 7, pod(k::fuse_fallocate_in{12, 100, 200, FALLOC_FL_KEEP_SIZE, 0}),
        fmt("fallocate 7 fh=12 mode=%d off=100 len=200", FALLOC_FL_KEEP_SIZE));
  check(Op::Lseek, 7, pod(k::fuse_lseek_in{12, 300, SEEK_DATA, 0}),
        fmt("lseek 7 fh=12 off=300 whence=%d", SEEK_DATA));
  check(Op::CopyFileRange, 7, pod(k::fuse_copy_file_range_in{12, 1, 8, 14, 2, 3, 0}),
        "copy_file_range 7 fh=12 off=1 -> 8 fh=14 off=2 len=3 flags=0");
  check(Op::Getlk, 7, lk_body(12, 0x77, F_WRLCK, 10, 20), "getlk 7 fh=12 owner=119 10-20 type=1 pid=0");
  check(Op::Setlk, 7, lk_body(12, 0x77, F_RDLCK, 0, 5), "setlk 7 fh=12 owner=119 0-5 type=0 pid=0");
  check(Op::Setlkw, 7, lk_body(12, 0x77, F_UNLCK, 0, 5), "setlk 7 fh=12 owner=119 0-5 type=2 pid=0");
  {
    k::fuse_lk_in in{};
    in.fh = 12;
    in.lk = {0, INT64_MAX, F_WRLCK, 0};
    in.lk_flags = k::kLkFlock;
    check(Op::Setlk, 7, pod(in), fmt("flock 7 fh=12 op=%d", LOCK_EX | LOCK_NB));
  }
  fs_.calls.clear();
  EXPECT_EQ(send(Op::Interrupt, 0, pod(k::fuse_interrupt_in{12345})), -1);
  EXPECT_TRUE(fs_.calls.empty()) << "INTERRUPT reaches no backend method";
  covered.insert(code(Op::Interrupt));
  check(Op::Destroy, 0, "", "destroy");

  for (uint32_t op = 0; op <= k::kMaxOpcode; ++op)
    if (opcode_served(op)) {
      EXPECT_TRUE(covered.count(op)) << opcode_name(op) << " is not covered";
    }
}

}  // namespace
}  // namespace fuse::testing

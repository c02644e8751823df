// fuse::Session: INIT negotiation and real operations round-tripped through the session and
// a PassthroughFs on a temp directory (no mount, no /dev/fuse, no root needed).
#include "fuse/session.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "session_harness.h"
#include "../testing/eventually.h"

namespace fuse::testing {
namespace {

using efuse::testing::read_file;
using efuse::testing::write_file;
namespace init = k::init;
using k::kRootId;
using Op = k::Opcode;

uint64_t granted_flags(const k::fuse_init_out& o) {
  return o.flags | (static_cast<uint64_t>(o.flags2) << 32);
}

// ---- INIT --------------------------------------------------------------------------------

TEST(SessionInit, ModernKernelGetsItsMinorAndOnlyFlagsOfferedAndWanted) {
  SessionHarness h;
  Reply r = h.init(kKernelFlags, 45);
  ASSERT_EQ(r.error(), 0);
  ASSERT_EQ(r.payload.size(), sizeof(k::fuse_init_out));
  auto o = r.as<k::fuse_init_out>();
  EXPECT_EQ(o.major, 7u);
  EXPECT_EQ(o.minor, 45u);
  uint64_t granted = granted_flags(o);
  EXPECT_EQ(granted & ~kKernelFlags, 0u) << "granted a flag the kernel did not offer";
  // What efused relies on from a modern kernel.
  for (uint64_t f : {init::kAsyncRead, init::kPosixLocks, init::kFlockLocks, init::kAtomicOTrunc,
                     init::kBigWrites, init::kDoReaddirplus, init::kReaddirplusAuto,
                     init::kParallelDirops, init::kMaxPages, init::kSetxattrExt, init::kInitExt,
                     init::kPassthrough, init::kDontMask, init::kHandleKillprivV2})
    EXPECT_NE(granted & f, 0u) << "flag 0x" << std::hex << f << " not granted";
  // Offered but not wanted: writeback cache was not configured (and conflicts with
  // passthrough); export support needs LOOKUP of "." and ".." by nodeid, which efused does
  // not implement; POSIX ACLs only when the session is asked to (default_permissions).
  for (uint64_t f : {init::kWritebackCache, init::kExportSupport, init::kPosixAcl})
    EXPECT_EQ(granted & f, 0u) << "flag 0x" << std::hex << f << " granted";

  EXPECT_EQ(o.max_readahead, 128u * 1024);
  EXPECT_EQ(o.max_write, 1u << 20);
  EXPECT_EQ(o.max_pages, 256u);
  EXPECT_EQ(o.max_background, 64u);
  EXPECT_EQ(o.congestion_threshold, 48u);
  EXPECT_EQ(o.time_gran, 1u);
  EXPECT_EQ(o.max_stack_depth, 1u) << "passthrough needs a stacking depth";

  ASSERT_TRUE(h.session().initialized());
  const Negotiated& n = h.session().negotiated();
  EXPECT_EQ(n.major, 7u);
  EXPECT_EQ(n.minor, 45u);
  EXPECT_EQ(n.flags, granted);
  EXPECT_EQ(n.kernel_flags, kKernelFlags);
  EXPECT_EQ(n.max_write, 1u << 20);
  EXPECT_EQ(n.max_pages, 256u);
}

TEST(SessionInit, GrantsExactlyTheWantedSubsetOfASmallOffer) {
  SessionHarness h;
  uint64_t offer = init::kAsyncRead | init::kBigWrites | init::kSpliceRead | init::kMaxPages |
                   init::kInitExt | init::kPassthrough | init::kOverIoUring;
  Reply r = h.init(offer);
  ASSERT_EQ(r.error(), 0);
  EXPECT_EQ(granted_flags(r.as<k::fuse_init_out>()),
            init::kAsyncRead | init::kBigWrites | init::kMaxPages | init::kInitExt |
                init::kPassthrough);
}

TEST(SessionInit, WritebackCacheYieldsToPassthrough) {
  SessionOptions opts;
  opts.writeback_cache = true;
  {
    SessionHarness h(opts);
    auto o = h.init().as<k::fuse_init_out>();
    EXPECT_NE(granted_flags(o) & init::kPassthrough, 0u);
    EXPECT_EQ(granted_flags(o) & init::kWritebackCache, 0u);
  }
  opts.passthrough = false;
  {
    SessionHarness h(opts);
    auto o = h.init().as<k::fuse_init_out>();
    EXPECT_EQ(granted_flags(o) & init::kPassthrough, 0u);
    EXPECT_NE(granted_flags(o) & init::kWritebackCache, 0u);
    EXPECT_EQ(o.max_stack_depth, 0u);
  }
}

TEST(SessionInit, Flags2CountOnlyWithInitExt) {
  SessionHarness h;
  uint64_t offer = kKernelFlags & ~init::kInitExt;  // flags2 bits set, INIT_EXT not offered
  Reply r = h.init(offer);
  ASSERT_EQ(r.error(), 0);
  auto o = r.as<k::fuse_init_out>();
  EXPECT_EQ(o.flags2, 0u);
  EXPECT_EQ(o.flags & init::kInitExt, 0u);
  EXPECT_FALSE(h.session().negotiated().has(init::kPassthrough));
  EXPECT_EQ(h.session().negotiated().kernel_flags, offer & 0xffffffffu);
}

TEST(SessionInit, OldestSupportedKernelSendsTheCompatLayout) {
  SessionHarness h;
  std::string body = init_body(7, 31, init::kAsyncRead | init::kMaxPages | init::kPosixLocks)
                         .substr(0, k::kCompatInitInSize);
  Reply r = h.call(Op::Init, 0, body);
  ASSERT_EQ(r.error(), 0);
  auto o = r.as<k::fuse_init_out>();
  EXPECT_EQ(o.major, 7u);
  EXPECT_EQ(o.minor, 31u);
  EXPECT_EQ(granted_flags(o), init::kAsyncRead | init::kMaxPages | init::kPosixLocks);
  EXPECT_TRUE(h.session().initialized());
}

TEST(SessionInit, NewerMinorIsAnsweredWithOurs) {
  SessionHarness h;
  Reply r = h.init(kKernelFlags, 50);
  ASSERT_EQ(r.error(), 0);
  EXPECT_EQ(r.as<k::fuse_init_out>().minor, 45u);
  EXPECT_EQ(h.session().negotiated().minor, 45u);
}

TEST(SessionInit, WithoutMaxPagesWritesAreCappedAt128K) {
  SessionHarness h;
  Reply r = h.init(init::kAsyncRead | init::kBigWrites);
  ASSERT_EQ(r.error(), 0);
  auto o = r.as<k::fuse_init_out>();
  EXPECT_EQ(o.max_write, 128u * 1024);
  EXPECT_EQ(h.session().negotiated().max_write, 128u * 1024);
}

TEST(SessionInit, MinorBelow31GetsEprotoAndMayRetry) {
  SessionHarness h;
  EXPECT_EQ(h.call(Op::Init, 0, init_body(7, 30, kKernelFlags)).error(), EPROTO);
  EXPECT_FALSE(h.session().initialized());
  EXPECT_EQ(h.call(Op::Init, 0, init_body(7, 26, 0)).error(), EPROTO);
  EXPECT_EQ(h.init().error(), 0);
  EXPECT_TRUE(h.session().initialized());
}

TEST(SessionInit, NewerMajorGetsOurMajorSoTheKernelCanRetry) {
  SessionHarness h;
  Reply r = h.call(Op::Init, 0, init_body(8, 0, kKernelFlags));
  ASSERT_EQ(r.error(), 0);
  ASSERT_EQ(r.payload.size(), 8u) << "only major and minor, as the kernel expects";
  EXPECT_EQ(r.as<uint32_t>(0), 7u);
  EXPECT_EQ(r.as<uint32_t>(4), 45u);
  EXPECT_FALSE(h.session().initialized());
  EXPECT_EQ(h.init().error(), 0);
  EXPECT_TRUE(h.session().initialized());
}

TEST(SessionInit, OlderMajorGetsEproto) {
  SessionHarness h;
  EXPECT_EQ(h.call(Op::Init, 0, init_body(6, 45, kKernelFlags)).error(), EPROTO);
  EXPECT_FALSE(h.session().initialized());
}

TEST(SessionInit, EmptyOrZeroMajorInitIsMalformed) {
  SessionHarness h;
  EXPECT_EQ(h.call(Op::Init, 0, "").error(), EINVAL);
  EXPECT_EQ(h.call(Op::Init, 0, init_body(0, 45, 0)).error(), EINVAL);
  EXPECT_EQ(h.session().decode_errors(), 2u);
  EXPECT_FALSE(h.session().initialized());
}

// kCompatInitInSize (16 bytes) is the smallest INIT a kernel ever sends; a shorter body is
// malformed (EINVAL and a decode error), never zero-filled and accepted.
TEST(SessionInit, BodyShorterThanTheCompatLayoutIsMalformed) {
  for (size_t len = 4; len < k::kCompatInitInSize; ++len) {
    SessionHarness h;
    SCOPED_TRACE("INIT body of " + std::to_string(len) + " bytes");
    std::string body = init_body(7, 45, kKernelFlags).substr(0, len);
    EXPECT_EQ(h.call(Op::Init, 0, body).error(), EINVAL);
    EXPECT_FALSE(h.session().initialized());
    EXPECT_EQ(h.session().decode_errors(), 1u);
  }
}

TEST(SessionInit, RequestsBeforeInitGetEio) {
  SessionHarness h;
  EXPECT_EQ(h.call(Op::Getattr, kRootId, pod(k::fuse_getattr_in{})).error(), EIO);
  EXPECT_EQ(h.call(Op::Lookup, kRootId, cstr("x")).error(), EIO);
  EXPECT_EQ(h.call(Op::Statfs, kRootId, "").error(), EIO);
  EXPECT_EQ(h.call(Op::Opendir, kRootId, pod(k::fuse_open_in{})).error(), EIO);
  EXPECT_FALSE(h.session().initialized());
}

TEST(SessionInit, SecondInitGetsEioAndChangesNothing) {
  SessionHarness h;
  ASSERT_EQ(h.init().error(), 0);
  EXPECT_EQ(h.call(Op::Init, 0, init_body(7, 36, init::kAsyncRead)).error(), EIO);
  EXPECT_EQ(h.session().negotiated().minor, 45u);
  EXPECT_NE(h.session().negotiated().flags & init::kPassthrough, 0u);
}

// ---- operations through a passthrough backend ----------------------------------------------

class SessionOps : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(h.init().error(), 0); }

  k::fuse_entry_out mkdir(uint64_t parent, const std::string& name, uint32_t mode = 0755) {
    Reply r = h.call(Op::Mkdir, parent, pod(k::fuse_mkdir_in{mode, 0}) + cstr(name));
    EXPECT_EQ(r.error(), 0) << "mkdir " << name;
    return r.as<k::fuse_entry_out>();
  }

  // Reads a directory through one handle, `size` bytes per request, each request resuming
  // at the offset of the last record received. Stops at the first empty reply.
  std::vector<Dirent> read_dir(uint64_t nodeid, uint64_t fh, bool plus, uint32_t size,
                               uint64_t offset = 0, int* requests = nullptr) {
    std::vector<Dirent> all;
    for (int i = 0; i < 10000; ++i) {
      Reply r = h.call(plus ? Op::Readdirplus : Op::Readdir, nodeid, read_body(fh, offset, size));
      if (r.error() != 0) {
        ADD_FAILURE() << "readdir error " << r.error();
        break;
      }
      if (requests != nullptr) ++*requests;
      EXPECT_LE(r.payload.size(), size);
      std::vector<Dirent> batch;
      EXPECT_TRUE(parse_dirents(r.payload, plus, &batch));
      if (batch.empty()) break;
      offset = batch.back().off;
      all.insert(all.end(), batch.begin(), batch.end());
    }
    return all;
  }

  SessionHarness h;
};

TEST_F(SessionOps, LookupGivesAnEntryWithSizeModeAndNodeid) {
  ASSERT_TRUE(write_file(h.src("hello.txt"), "hello world"));
  ASSERT_EQ(::chmod(h.src("hello.txt").c_str(), 0640), 0);
  struct stat st;
  ASSERT_EQ(::stat(h.src("hello.txt").c_str(), &st), 0);

  Reply r = h.call(Op::Lookup, kRootId, cstr("hello.txt"));
  ASSERT_EQ(r.error(), 0);
  ASSERT_EQ(r.payload.size(), sizeof(k::fuse_entry_out));
  auto e = r.as<k::fuse_entry_out>();
  EXPECT_GE(e.nodeid, 2u);
  EXPECT_EQ(e.attr.size, 11u);
  EXPECT_EQ(e.attr.mode, S_IFREG | 0640u);
  EXPECT_EQ(e.attr.ino, st.st_ino);
  EXPECT_EQ(e.attr.nlink, 1u);
  EXPECT_EQ(e.attr.uid, st.st_uid);
  EXPECT_EQ(e.attr.mtime, static_cast<uint64_t>(st.st_mtim.tv_sec));
  EXPECT_EQ(e.attr.mtimensec, static_cast<uint32_t>(st.st_mtim.tv_nsec));
  EXPECT_EQ(e.entry_valid, 1u);
  EXPECT_EQ(e.attr_valid, 1u);
  EXPECT_EQ(e.entry_valid_nsec, 0u);

  EXPECT_EQ(h.lookup(kRootId, "hello.txt").nodeid, e.nodeid) << "same inode, same nodeid";

  Reply g = h.call(Op::Getattr, e.nodeid, pod(k::fuse_getattr_in{}));
  ASSERT_EQ(g.error(), 0);
  ASSERT_EQ(g.payload.size(), sizeof(k::fuse_attr_out));
  auto a = g.as<k::fuse_attr_out>();
  EXPECT_EQ(a.attr.size, 11u);
  EXPECT_EQ(a.attr.mode, S_IFREG | 0640u);
  EXPECT_EQ(a.attr.ino, st.st_ino);
  EXPECT_EQ(a.attr_valid, 1u);

  struct stat root;
  ASSERT_EQ(::stat(h.src().c_str(), &root), 0);
  auto ra = h.getattr(kRootId);
  EXPECT_TRUE(S_ISDIR(ra.mode));
  EXPECT_EQ(ra.ino, root.st_ino);
}

TEST_F(SessionOps, LookupOfAMissingNameIsACacheableNegativeEntry) {
  Reply r = h.call(Op::Lookup, kRootId, cstr("missing"));
  ASSERT_EQ(r.error(), 0);
  auto e = r.as<k::fuse_entry_out>();
  EXPECT_EQ(e.nodeid, 0u);
  EXPECT_EQ(e.entry_valid, 1u);
}

TEST_F(SessionOps, LookupWithoutNegativeCachingGivesEnoent) {
  SessionOptions opts;
  opts.negative_timeout = 0;
  SessionHarness h2(opts);
  ASSERT_EQ(h2.init().error(), 0);
  EXPECT_EQ(h2.call(Op::Lookup, kRootId, cstr("missing")).error(), ENOENT);
}

TEST_F(SessionOps, MkdirCreateWriteReadRelease) {
  auto dir = mkdir(kRootId, "d");
  EXPECT_TRUE(S_ISDIR(dir.attr.mode));
  struct stat st;
  ASSERT_EQ(::stat(h.src("d").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(dir.attr.ino, st.st_ino);

  Reply cr = h.call(Op::Create, dir.nodeid,
                    pod(k::fuse_create_in{O_RDWR | O_CREAT, S_IFREG | 0600, 0, 0}) + cstr("f"));
  ASSERT_EQ(cr.error(), 0);
  ASSERT_EQ(cr.payload.size(), sizeof(k::fuse_entry_out) + sizeof(k::fuse_open_out));
  auto ce = cr.as<k::fuse_entry_out>();
  auto co = cr.as<k::fuse_open_out>(sizeof(k::fuse_entry_out));
  EXPECT_TRUE(S_ISREG(ce.attr.mode));
  EXPECT_EQ(ce.attr.size, 0u);
  EXPECT_GE(ce.nodeid, 2u);
  // The transport refused the backing file (EPERM), so I/O goes through the daemon.
  EXPECT_EQ(h.connection().backing_opens(), 1u);
  EXPECT_EQ(h.session().passthrough_refusals(), 1u);
  EXPECT_EQ(h.session().passthrough_opens(), 0u);
  EXPECT_EQ(co.open_flags & k::kFopenPassthrough, 0u);
  EXPECT_EQ(co.backing_id, 0);

  const std::string data = "The quick brown fox jumps over the lazy dog";
  Reply w = h.call(Op::Write, ce.nodeid, write_body(co.fh, 0, data));
  ASSERT_EQ(w.error(), 0);
  ASSERT_EQ(w.payload.size(), sizeof(k::fuse_write_out));
  EXPECT_EQ(w.as<k::fuse_write_out>().size, data.size());

  EXPECT_EQ(h.call(Op::Read, ce.nodeid, read_body(co.fh, 0, 4096)).payload, data);
  EXPECT_EQ(h.call(Op::Read, ce.nodeid, read_body(co.fh, 4, 5)).payload, "quick");
  Reply eof = h.call(Op::Read, ce.nodeid, read_body(co.fh, 1000, 10));
  EXPECT_EQ(eof.error(), 0);
  EXPECT_EQ(eof.payload, "");
  EXPECT_EQ(h.getattr(ce.nodeid).size, data.size());

  k::fuse_flush_in fl{};
  fl.fh = co.fh;
  EXPECT_EQ(h.call(Op::Flush, ce.nodeid, pod(fl)).error(), 0);
  Reply rel = h.call(Op::Release, ce.nodeid, release_body(co.fh));
  EXPECT_EQ(rel.error(), 0);
  EXPECT_EQ(rel.payload.size(), 0u);
  EXPECT_EQ(read_file(h.src("d/f")), data);
  // RELEASE closed the backing descriptor: the handle is dead now.
  EXPECT_EQ(h.call(Op::Read, ce.nodeid, read_body(co.fh, 0, 10)).error(), EBADF);

  // Reopened read-only, through a new handle.
  uint64_t fh = h.open(ce.nodeid, O_RDONLY);
  EXPECT_EQ(h.call(Op::Read, ce.nodeid, read_body(fh, 10, 5)).payload, "brown");
  EXPECT_EQ(h.call(Op::Write, ce.nodeid, write_body(fh, 0, "x")).error(), EBADF);
  h.release(ce.nodeid, fh);
}

TEST_F(SessionOps, NamespaceOperations) {
  ASSERT_TRUE(write_file(h.src("f"), "0123456789"));
  auto f = h.lookup(kRootId, "f");

  Reply sl = h.call(Op::Symlink, kRootId, cstr("ln") + cstr("../some/where"));
  ASSERT_EQ(sl.error(), 0);
  auto ln = sl.as<k::fuse_entry_out>();
  EXPECT_TRUE(S_ISLNK(ln.attr.mode));
  Reply rl = h.call(Op::Readlink, ln.nodeid, "");
  EXPECT_EQ(rl.error(), 0);
  EXPECT_EQ(rl.payload, "../some/where");

  Reply lk = h.call(Op::Link, kRootId, pod(k::fuse_link_in{f.nodeid}) + cstr("f2"));
  ASSERT_EQ(lk.error(), 0);
  EXPECT_EQ(lk.as<k::fuse_entry_out>().nodeid, f.nodeid);
  EXPECT_EQ(lk.as<k::fuse_entry_out>().attr.nlink, 2u);

  k::fuse_mknod_in mk{S_IFREG | 0644, 0, 0, 0};
  Reply mn = h.call(Op::Mknod, kRootId, pod(mk) + cstr("node"));
  ASSERT_EQ(mn.error(), 0);
  EXPECT_TRUE(S_ISREG(mn.as<k::fuse_entry_out>().attr.mode));

  EXPECT_EQ(h.call(Op::Rename, kRootId, pod(k::fuse_rename_in{kRootId}) + cstr("f2") + cstr("g"))
                .error(),
            0);
  EXPECT_EQ(::access(h.src("g").c_str(), F_OK), 0);
  EXPECT_NE(::access(h.src("f2").c_str(), F_OK), 0);
  k::fuse_rename2_in r2{kRootId, RENAME_NOREPLACE, 0};
  EXPECT_EQ(h.call(Op::Rename2, kRootId, pod(r2) + cstr("g") + cstr("node")).error(), EEXIST);

  EXPECT_EQ(h.call(Op::Unlink, kRootId, cstr("g")).error(), 0);
  EXPECT_NE(::access(h.src("g").c_str(), F_OK), 0);
  EXPECT_EQ(h.call(Op::Unlink, kRootId, cstr("g")).error(), ENOENT);

  auto d = mkdir(kRootId, "sub");
  EXPECT_EQ(h.call(Op::Mkdir, kRootId, pod(k::fuse_mkdir_in{0755, 0}) + cstr("sub")).error(),
            EEXIST);
  ASSERT_TRUE(write_file(h.src("sub/x"), ""));
  EXPECT_EQ(h.call(Op::Rmdir, kRootId, cstr("sub")).error(), ENOTEMPTY);
  EXPECT_EQ(h.call(Op::Unlink, d.nodeid, cstr("x")).error(), 0);
  EXPECT_EQ(h.call(Op::Rmdir, kRootId, cstr("sub")).error(), 0);

  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrSize | k::kFattrMode;
  sa.size = 3;
  sa.mode = S_IFREG | 0600;
  Reply s = h.call(Op::Setattr, f.nodeid, pod(sa));
  ASSERT_EQ(s.error(), 0);
  EXPECT_EQ(s.as<k::fuse_attr_out>().attr.size, 3u);
  EXPECT_EQ(s.as<k::fuse_attr_out>().attr.mode, S_IFREG | 0600u);
  EXPECT_EQ(read_file(h.src("f")), "012");

  Reply sf = h.call(Op::Statfs, kRootId, "");
  ASSERT_EQ(sf.error(), 0);
  ASSERT_EQ(sf.payload.size(), sizeof(k::fuse_statfs_out));
  EXPECT_GT(sf.as<k::fuse_statfs_out>().st.bsize, 0u);
  EXPECT_EQ(sf.as<k::fuse_statfs_out>().st.namelen, 255u);

  EXPECT_EQ(h.call(Op::Access, f.nodeid, pod(k::fuse_access_in{R_OK, 0})).error(), 0);

  Reply dest = h.call(Op::Destroy, 0, "");
  EXPECT_EQ(dest.error(), 0);
  EXPECT_TRUE(h.session().destroyed());
}

TEST_F(SessionOps, FileDataOperations) {
  ASSERT_TRUE(write_file(h.src("a"), std::string(4096, 'a')));
  ASSERT_TRUE(write_file(h.src("b"), ""));
  auto a = h.lookup(kRootId, "a");
  auto b = h.lookup(kRootId, "b");
  uint64_t fa = h.open(a.nodeid, O_RDWR);
  uint64_t fb = h.open(b.nodeid, O_RDWR);

  k::fuse_lseek_in ls{fa, 0, SEEK_END, 0};
  Reply l = h.call(Op::Lseek, a.nodeid, pod(ls));
  ASSERT_EQ(l.error(), 0);
  EXPECT_EQ(l.as<k::fuse_lseek_out>().offset, 4096u);

  k::fuse_copy_file_range_in cf{fa, 100, b.nodeid, fb, 0, 50, 0};
  Reply c = h.call(Op::CopyFileRange, a.nodeid, pod(cf));
  ASSERT_EQ(c.error(), 0);
  EXPECT_EQ(c.as<k::fuse_write_out>().size, 50u);
  EXPECT_EQ(read_file(h.src("b")), std::string(50, 'a'));

  k::fuse_fallocate_in fa_in{fb, 0, 8192, 0, 0};
  EXPECT_EQ(h.call(Op::Fallocate, b.nodeid, pod(fa_in)).error(), 0);
  EXPECT_EQ(h.getattr(b.nodeid).size, 8192u);

  k::fuse_fsync_in fs_in{fb, k::kFsyncFdatasync, 0};
  EXPECT_EQ(h.call(Op::Fsync, b.nodeid, pod(fs_in)).error(), 0);

  // GETATTR by handle.
  k::fuse_getattr_in ga{k::kGetattrFh, 0, fa};
  Reply g = h.call(Op::Getattr, a.nodeid, pod(ga));
  ASSERT_EQ(g.error(), 0);
  EXPECT_EQ(g.as<k::fuse_attr_out>().attr.size, 4096u);

  h.release(a.nodeid, fa);
  h.release(b.nodeid, fb);
}

TEST_F(SessionOps, ReaddirRecordsAreAlignedAndOffsetsResume) {
  auto d = mkdir(kRootId, "many");
  std::set<std::string> want = {".", ".."};
  for (int i = 0; i < 60; ++i) {
    std::string name("f");  // appended piece by piece: GCC 12 -O3 false -Wrestrict
    name += std::to_string(i);
    name += '_';
    name.append(static_cast<size_t>(i % 13), 'x');
    ASSERT_TRUE(write_file(h.src("many/" + name), ""));
    want.insert(name);
  }

  uint64_t fh = h.opendir(d.nodeid);
  int requests = 0;
  auto all = read_dir(d.nodeid, fh, false, 200, 0, &requests);
  EXPECT_GT(requests, 5) << "a 200-byte buffer must need many requests";
  std::set<std::string> got;
  std::set<uint64_t> offs;
  for (const Dirent& e : all) {
    EXPECT_TRUE(got.insert(e.name).second) << "duplicate " << e.name;
    EXPECT_TRUE(offs.insert(e.off).second) << "duplicate offset for " << e.name;
    EXPECT_NE(e.off, 0u);
    if (e.name != "." && e.name != "..") {
      struct stat st;
      ASSERT_EQ(::lstat(h.src("many/" + e.name).c_str(), &st), 0);
      EXPECT_EQ(e.ino, st.st_ino) << e.name;
      EXPECT_EQ(e.type, static_cast<uint32_t>(DT_REG)) << e.name;
    }
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(h.call(Op::Releasedir, d.nodeid, release_body(fh)).error(), 0);
  ASSERT_EQ(all.size(), want.size());

  // Resuming from any record's offset, on a fresh handle, continues right after it.
  for (size_t i : {size_t{0}, size_t{1}, all.size() / 2, all.size() - 2, all.size() - 1}) {
    uint64_t fh2 = h.opendir(d.nodeid);
    Reply r = h.call(Op::Readdir, d.nodeid, read_body(fh2, all[i].off, 4096));
    ASSERT_EQ(r.error(), 0);
    std::vector<Dirent> rest;
    ASSERT_TRUE(parse_dirents(r.payload, false, &rest));
    ASSERT_EQ(rest.size(), all.size() - i - 1) << "resuming after record " << i;
    if (!rest.empty()) {
      EXPECT_EQ(rest.front().name, all[i + 1].name);
    }
    EXPECT_EQ(h.call(Op::Releasedir, d.nodeid, release_body(fh2)).error(), 0);
  }

  // Offset 0 on a used handle starts over.
  uint64_t fh3 = h.opendir(d.nodeid);
  EXPECT_EQ(read_dir(d.nodeid, fh3, false, 4096).size(), all.size());
  EXPECT_EQ(read_dir(d.nodeid, fh3, false, 4096).size(), all.size());
  EXPECT_EQ(h.call(Op::Releasedir, d.nodeid, release_body(fh3)).error(), 0);
  EXPECT_EQ(h.call(Op::Releasedir, d.nodeid, release_body(fh3)).error(), EBADF);
}

TEST_F(SessionOps, ReaddirplusGivesEntriesWithNodeids) {
  auto d = mkdir(kRootId, "plus");
  std::map<std::string, size_t> sizes;
  for (int i = 0; i < 30; ++i) {
    std::string name = "entry" + std::to_string(i);
    ASSERT_TRUE(write_file(h.src("plus/" + name), std::string(static_cast<size_t>(i), 'z')));
    sizes[name] = static_cast<size_t>(i);
  }
  ASSERT_EQ(::mkdir(h.src("plus/subdir").c_str(), 0755), 0);

  uint64_t fh = h.opendir(d.nodeid);
  int requests = 0;
  auto all = read_dir(d.nodeid, fh, true, 1024, 0, &requests);
  EXPECT_GT(requests, 3);
  std::set<std::string> names;
  for (const Dirent& e : all) {
    names.insert(e.name);
    if (e.name == "." || e.name == "..") {
      EXPECT_EQ(e.entry.nodeid, 0u) << "no nodeid (no lookup count) for " << e.name;
      EXPECT_EQ(e.type, static_cast<uint32_t>(DT_DIR));
      continue;
    }
    EXPECT_GE(e.entry.nodeid, 2u) << e.name;
    EXPECT_EQ(e.entry.attr.ino, e.ino) << e.name;
    EXPECT_EQ(e.entry.entry_valid, 1u);
    if (e.name == "subdir") {
      EXPECT_TRUE(S_ISDIR(e.entry.attr.mode));
      EXPECT_EQ(e.type, static_cast<uint32_t>(DT_DIR));
    } else {
      EXPECT_TRUE(S_ISREG(e.entry.attr.mode)) << e.name;
      EXPECT_EQ(e.type, static_cast<uint32_t>(DT_REG));
      EXPECT_EQ(e.entry.attr.size, sizes[e.name]) << e.name;
    }
    // Each entry counted a lookup: its nodeid works, and a FORGET of one drops it.
    EXPECT_EQ(h.getattr(e.entry.nodeid).ino, e.ino);
  }
  EXPECT_EQ(names.size(), sizes.size() + 3);
  EXPECT_EQ(h.call(Op::Releasedir, d.nodeid, release_body(fh)).error(), 0);

  const Dirent& any = all.back();
  ASSERT_GE(any.entry.nodeid, 2u);
  h.call_no_reply(Op::Forget, any.entry.nodeid, pod(k::fuse_forget_in{1}));
  EXPECT_EQ(h.call(Op::Getattr, any.entry.nodeid, pod(k::fuse_getattr_in{})).error(), ESTALE);
}

TEST_F(SessionOps, Xattrs) {
  ASSERT_TRUE(write_file(h.src("x"), ""));
  if (::setxattr(h.src("x").c_str(), "user.probe", "1", 1, 0) != 0)
    GTEST_SKIP() << "the temp file system has no user xattrs: " << strerror(errno);
  ASSERT_EQ(::removexattr(h.src("x").c_str(), "user.probe"), 0);
  auto x = h.lookup(kRootId, "x");

  EXPECT_EQ(h.call(Op::Setxattr, x.nodeid, setxattr_body("user.test", "hello")).error(), 0);
  char buf[16] = {};
  EXPECT_EQ(::getxattr(h.src("x").c_str(), "user.test", buf, sizeof buf), 5);
  EXPECT_STREQ(buf, "hello");
  EXPECT_EQ(h.call(Op::Setxattr, x.nodeid, setxattr_body("user.test", "v", XATTR_CREATE)).error(),
            EEXIST);

  Reply size = h.call(Op::Getxattr, x.nodeid, getxattr_body("user.test", 0));
  ASSERT_EQ(size.error(), 0);
  ASSERT_EQ(size.payload.size(), sizeof(k::fuse_getxattr_out));
  EXPECT_EQ(size.as<k::fuse_getxattr_out>().size, 5u);

  Reply value = h.call(Op::Getxattr, x.nodeid, getxattr_body("user.test", 64));
  EXPECT_EQ(value.error(), 0);
  EXPECT_EQ(value.payload, "hello");
  EXPECT_EQ(h.call(Op::Getxattr, x.nodeid, getxattr_body("user.test", 2)).error(), ERANGE);
  EXPECT_EQ(h.call(Op::Getxattr, x.nodeid, getxattr_body("user.none", 64)).error(), ENODATA);

  Reply list = h.call(Op::Listxattr, x.nodeid, pod(k::fuse_getxattr_in{256, 0}));
  EXPECT_EQ(list.error(), 0);
  EXPECT_NE(list.payload.find(std::string("user.test\0", 10)), std::string::npos);
  Reply list_size = h.call(Op::Listxattr, x.nodeid, pod(k::fuse_getxattr_in{0, 0}));
  EXPECT_EQ(list_size.as<k::fuse_getxattr_out>().size, list.payload.size());

  EXPECT_EQ(h.call(Op::Removexattr, x.nodeid, cstr("user.test")).error(), 0);
  EXPECT_EQ(h.call(Op::Getxattr, x.nodeid, getxattr_body("user.test", 0)).error(), ENODATA);
}

TEST_F(SessionOps, UnknownOpcodesGetEnosys) {
  for (uint32_t op : {0u, 7u, 19u, 54u, 100u, 4096u, 9999u, 0xffffffffu}) {
    SCOPED_TRACE("opcode " + std::to_string(op));
    Reply r = h.call(op, kRootId, std::string(16, '\0'));
    EXPECT_EQ(r.error(), ENOSYS);
  }
  // Known to the protocol but not served by efused (ioctl, poll, bmap).
  for (Op op : {Op::Bmap, Op::Ioctl, Op::Poll})
    EXPECT_EQ(h.call(op, kRootId, std::string(64, '\0')).error(), ENOSYS);
}

TEST_F(SessionOps, ForgetBatchForgetAndInterruptAreNotAnswered) {
  ASSERT_TRUE(write_file(h.src("a"), ""));
  ASSERT_TRUE(write_file(h.src("b"), ""));
  ASSERT_TRUE(write_file(h.src("c"), ""));
  uint64_t a = h.lookup(kRootId, "a").nodeid;
  h.lookup(kRootId, "a");
  uint64_t b = h.lookup(kRootId, "b").nodeid;
  uint64_t c = h.lookup(kRootId, "c").nodeid;

  h.call_no_reply(Op::Forget, a, pod(k::fuse_forget_in{1}));
  EXPECT_EQ(h.getattr(a).size, 0u) << "one of two lookups left";
  h.call_no_reply(Op::Forget, a, pod(k::fuse_forget_in{1}));
  EXPECT_EQ(h.call(Op::Getattr, a, pod(k::fuse_getattr_in{})).error(), ESTALE);

  std::string batch = pod(k::fuse_batch_forget_in{2, 0}) + pod(k::fuse_forget_one{b, 1}) +
                      pod(k::fuse_forget_one{c, 1});
  h.call_no_reply(Op::BatchForget, 0, batch);
  EXPECT_EQ(h.call(Op::Getattr, b, pod(k::fuse_getattr_in{})).error(), ESTALE);
  EXPECT_EQ(h.call(Op::Getattr, c, pod(k::fuse_getattr_in{})).error(), ESTALE);

  h.call_no_reply(Op::Interrupt, 0, pod(k::fuse_interrupt_in{12345}));
  // Forgetting the root or an unknown nodeid is harmless.
  h.call_no_reply(Op::Forget, kRootId, pod(k::fuse_forget_in{100}));
  h.call_no_reply(Op::Forget, 0xdead0000beefULL, pod(k::fuse_forget_in{1}));
  EXPECT_TRUE(S_ISDIR(h.getattr(kRootId).mode));
  EXPECT_EQ(h.session().decode_errors(), 0u);
}

TEST_F(SessionOps, BogusNodeidsGiveEstale) {
  const uint64_t bogus = 0xdead0000beefULL;
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrMode;
  sa.mode = 0644;
  const std::vector<std::pair<Op, std::string>> reqs = {
      {Op::Lookup, cstr("x")},
      {Op::Getattr, pod(k::fuse_getattr_in{})},
      {Op::Setattr, pod(sa)},
      {Op::Readlink, ""},
      {Op::Symlink, cstr("s") + cstr("t")},
      {Op::Mknod, pod(k::fuse_mknod_in{S_IFREG | 0644, 0, 0, 0}) + cstr("n")},
      {Op::Mkdir, pod(k::fuse_mkdir_in{0755, 0}) + cstr("d")},
      {Op::Unlink, cstr("x")},
      {Op::Rmdir, cstr("x")},
      {Op::Rename, pod(k::fuse_rename_in{kRootId}) + cstr("x") + cstr("y")},
      {Op::Rename2, pod(k::fuse_rename2_in{kRootId, 0, 0}) + cstr("x") + cstr("y")},
      {Op::Link, pod(k::fuse_link_in{kRootId}) + cstr("l")},
      {Op::Open, pod(k::fuse_open_in{O_RDONLY, 0})},
      {Op::Create, pod(k::fuse_create_in{O_RDWR, 0644, 0, 0}) + cstr("c")},
      {Op::Opendir, pod(k::fuse_open_in{O_RDONLY, 0})},
      {Op::Statfs, ""},
      {Op::Access, pod(k::fuse_access_in{R_OK, 0})},
      {Op::Setxattr, setxattr_body("user.a", "b")},
      {Op::Getxattr, getxattr_body("user.a", 0)},
      {Op::Listxattr, pod(k::fuse_getxattr_in{0, 0})},
      {Op::Removexattr, cstr("user.a")},
      {Op::Getlk, lk_body(1u << 30, 1, F_RDLCK)},
      {Op::Setlk, lk_body(1u << 30, 1, F_RDLCK)},
  };
  for (const auto& [op, body] : reqs) {
    SCOPED_TRACE("opcode " + std::to_string(code(op)));
    EXPECT_EQ(h.call(op, bogus, body).error(), ESTALE);
  }
  // Bogus nodeids inside bodies too.
  EXPECT_EQ(h.call(Op::Link, kRootId, pod(k::fuse_link_in{bogus}) + cstr("l")).error(), ESTALE);
  EXPECT_EQ(
      h.call(Op::Rename, kRootId, pod(k::fuse_rename_in{bogus}) + cstr("x") + cstr("y")).error(),
      ESTALE);
  // Unknown handles: EBADF.
  EXPECT_EQ(h.call(Op::Read, kRootId, read_body(1u << 30, 0, 10)).error(), EBADF);
  EXPECT_EQ(h.call(Op::Readdir, kRootId, read_body(777777, 0, 4096)).error(), EBADF);
  EXPECT_EQ(h.call(Op::Releasedir, kRootId, release_body(777777)).error(), EBADF);
  // A valid directory handle with a bogus nodeid.
  uint64_t fh = h.opendir(kRootId);
  EXPECT_EQ(h.call(Op::Readdirplus, bogus, read_body(fh, 0, 4096)).error(), ESTALE);
  EXPECT_EQ(h.call(Op::Releasedir, kRootId, release_body(fh)).error(), 0);
  EXPECT_EQ(h.session().decode_errors(), 0u);
}

TEST_F(SessionOps, StatsCountRequestsAndErrorsPerOpcode) {
  const auto& lookups = h.session().stats()[code(Op::Lookup)];
  uint64_t req0 = lookups.requests.load(), err0 = lookups.errors.load();
  ASSERT_TRUE(write_file(h.src("s"), ""));
  h.lookup(kRootId, "s");
  EXPECT_EQ(h.call(Op::Lookup, 0xdead0000beefULL, cstr("s")).error(), ESTALE);
  EXPECT_EQ(lookups.requests.load(), req0 + 2);
  EXPECT_EQ(lookups.errors.load(), err0 + 1);
}

// Two passthrough opens of one inode share one backing id, closed with the last release.
// io_path auto: the backend decides each epoch's path (accel/io_path.h) and measures it:
// the cache path by the READs it served, the passthrough path by the session's backing-file
// registration (Filesystem::passthrough_registered). Every epoch ends up in backend_stats.
TEST_F(SessionOps, IoPathAutoDecidesAndMeasuresEachEpoch) {
  h.connection().grant_backing_ids();
  ASSERT_TRUE(write_file(h.src("small"), "tiny"));
  std::string big(100000, 'b');
  ASSERT_TRUE(write_file(h.src("big"), big));
  auto small = h.lookup(kRootId, "small");
  auto large = h.lookup(kRootId, "big");
  auto open_ro = [&](uint64_t nodeid) {
    Reply r = h.call(Op::Open, nodeid, pod(k::fuse_open_in{O_RDONLY, 0}));
    EXPECT_EQ(r.error(), 0);
    return r.as<k::fuse_open_out>();
  };
  // The starting guess: a read-only open of a small file uses the page cache...
  auto o1 = open_ro(small.nodeid);
  EXPECT_EQ(o1.open_flags & k::kFopenPassthrough, 0u);
  EXPECT_EQ(h.call(Op::Read, small.nodeid, read_body(o1.fh, 0, 4096)).payload, "tiny");
  // ... and a second open of the same inode joins its path, whatever the policy says.
  auto o2 = open_ro(small.nodeid);
  EXPECT_EQ(o2.open_flags & k::kFopenPassthrough, 0u);
  h.release(small.nodeid, o1.fh);
  h.release(small.nodeid, o2.fh);
  // A larger file: passthrough, registered once.
  auto o3 = open_ro(large.nodeid);
  EXPECT_NE(o3.open_flags & k::kFopenPassthrough, 0u);
  EXPECT_EQ(h.connection().backing_opens(), 1u);
  h.release(large.nodeid, o3.fh);

  efuse::accel::IoPathReport r = h.fs().io_path_report();
  using efuse::accel::IoPath;
  using efuse::accel::IoReason;
  auto decisions = [&](IoPath p, IoReason why) {
    return r.decisions[static_cast<size_t>(p)][static_cast<size_t>(why)];
  };
  EXPECT_EQ(decisions(IoPath::Cache, IoReason::Guess), 1u);
  EXPECT_EQ(decisions(IoPath::Passthrough, IoReason::Guess), 1u);
  EXPECT_EQ(r.epochs_measured, 2u);
  ASSERT_EQ(r.classes.size(), 2u);
  for (const auto& c : r.classes) {
    // One path of each class measured: each still probes, nothing predicted yet.
    EXPECT_EQ(c.engine.phase, efuse::accel::Phase::Probe) << c.name;
    EXPECT_EQ(c.engine.probe_samples[0] + c.engine.probe_samples[1], 1u) << c.name;
  }
  // The cache epoch served one READ (two opens): at least half a round trip per open.
  EXPECT_EQ(r.classes[0].name, "small_cold_read");
  EXPECT_EQ(r.classes[0].engine.probe_samples[0], 1u);
  EXPECT_EQ(r.classes[1].name, "medium_cold_read");
  EXPECT_EQ(r.classes[1].engine.probe_samples[1], 1u);

  // The next open of the small file is warm (its pages may be cached): another class.
  auto o4 = open_ro(small.nodeid);
  h.release(small.nodeid, o4.fh);
  r = h.fs().io_path_report();
  EXPECT_EQ(r.classes.size(), 3u);
  EXPECT_EQ(r.epochs_measured, 3u);
}

TEST_F(SessionOps, PassthroughBackingIdIsSharedPerInodeAndClosedWithItsLastOpen) {
  h.connection().grant_backing_ids();
  // io_path passthrough: every open asks for passthrough (auto would probe the cache path).
  efuse::fs::Policy fixed;
  fixed.adaptive_io = false;
  h.fs().set_policy(fixed);
  ASSERT_TRUE(write_file(h.src("p"), "data"));
  ASSERT_TRUE(write_file(h.src("q"), "data"));
  auto p = h.lookup(kRootId, "p");
  auto q = h.lookup(kRootId, "q");

  auto open_out = [&](uint64_t nodeid) {
    Reply r = h.call(Op::Open, nodeid, pod(k::fuse_open_in{O_RDWR, 0}));
    EXPECT_EQ(r.error(), 0);
    return r.as<k::fuse_open_out>();
  };
  auto o1 = open_out(p.nodeid);
  auto o2 = open_out(p.nodeid);
  auto o3 = open_out(q.nodeid);
  EXPECT_NE(o1.open_flags & k::kFopenPassthrough, 0u);
  EXPECT_NE(o2.open_flags & k::kFopenPassthrough, 0u);
  EXPECT_GT(o1.backing_id, 0);
  EXPECT_EQ(o1.backing_id, o2.backing_id);
  EXPECT_NE(o3.backing_id, o1.backing_id);
  EXPECT_EQ(h.connection().backing_opens(), 2u);
  EXPECT_EQ(h.session().passthrough_opens(), 3u);

  h.release(p.nodeid, o1.fh);
  EXPECT_TRUE(h.connection().closed_backing_ids().empty()) << "p still has an open";
  h.release(p.nodeid, o2.fh);
  EXPECT_EQ(h.connection().closed_backing_ids(), std::vector<int>{o1.backing_id});

  // A new open after the last release registers a new id.
  auto o4 = open_out(p.nodeid);
  EXPECT_GT(o4.backing_id, 0);
  EXPECT_EQ(h.connection().backing_opens(), 3u);
  h.release(p.nodeid, o4.fh);
  h.release(q.nodeid, o3.fh);
  EXPECT_EQ(h.connection().closed_backing_ids().size(), 3u);

  // Directories never get backing ids.
  Reply od = h.call(Op::Opendir, kRootId, pod(k::fuse_open_in{O_RDONLY, 0}));
  EXPECT_EQ(od.as<k::fuse_open_out>().open_flags & k::kFopenPassthrough, 0u);
  EXPECT_EQ(h.call(Op::Releasedir, kRootId, release_body(od.as<k::fuse_open_out>().fh)).error(),
            0);
}

// SETLKW on a conflicting lock is answered later, from a waiter thread: EINTR after an
// INTERRUPT, success once the holder's FLUSH drops its locks.
class SessionLocks : public SessionOps {
 protected:
  // The reply carrying `unique`: from *others (a reply that arrived with another request's,
  // e.g. the FLUSH that woke the waiter), from those h.call() set aside, or as it comes.
  // Every other reply seen is added to *others. A missing Reply when none came in 5 s.
  Reply wait_for(uint64_t unique, std::vector<Reply>* others) {
    for (Reply& r : h.take_stray()) others->push_back(r);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      for (const std::string& m : h.transport().take()) others->push_back(parse_reply(m));
      for (auto it = others->begin(); it != others->end(); ++it) {
        if (it->hdr.unique != unique) continue;
        Reply r = *it;
        others->erase(it);
        return r;
      }
      if (std::chrono::steady_clock::now() >= deadline) return Reply{};
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  // Sends INTERRUPT for `unique`; whatever came back (a waiter's reply) goes to *others.
  void interrupt(uint64_t unique, std::vector<Reply>* others) {
    for (const std::string& m : h.handle_raw(make_request(code(Op::Interrupt), 0, h.next_unique(),
                                                          pod(k::fuse_interrupt_in{unique}))))
      others->push_back(parse_reply(m));
  }
};

TEST_F(SessionLocks, BlockedSetlkwIsAnsweredByInterruptOrByTheUnlock) {
  ASSERT_TRUE(write_file(h.src("lock"), "x"));
  auto n = h.lookup(kRootId, "lock").nodeid;
  uint64_t fa = h.open(n, O_RDWR);
  uint64_t fb = h.open(n, O_RDWR);
  const uint64_t owner_a = 0xa, owner_b = 0xb;
  ASSERT_EQ(h.call(Op::Setlk, n, lk_body(fa, owner_a, F_WRLCK)).error(), 0);
  EXPECT_EQ(h.call(Op::Setlk, n, lk_body(fb, owner_b, F_WRLCK)).error(), EAGAIN);
  Reply gl = h.call(Op::Getlk, n, lk_body(fb, owner_b, F_WRLCK));
  ASSERT_EQ(gl.error(), 0);
  EXPECT_EQ(gl.as<k::fuse_lk_out>().lk.type, static_cast<uint32_t>(F_WRLCK));

  // 1. Interrupted.
  uint64_t u1 = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlkw), n, u1, lk_body(fb, owner_b, F_WRLCK)))
                  .empty())
      << "a blocked SETLKW is answered later";
  // The waiter may answer before handle_raw() collects: its reply then comes back with
  // the INTERRUPT's (which itself has none).
  std::vector<Reply> others;
  interrupt(u1, &others);
  Reply r1 = wait_for(u1, &others);
  EXPECT_EQ(r1.error(), EINTR);
  EXPECT_TRUE(others.empty()) << "INTERRUPT itself takes no reply";

  // 2. Granted when the holder's FLUSH releases its locks.
  uint64_t u2 = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlkw), n, u2, lk_body(fb, owner_b, F_WRLCK)))
                  .empty());
  k::fuse_flush_in fl{};
  fl.fh = fa;
  fl.lock_owner = owner_a;
  uint64_t uf = h.next_unique();
  for (const std::string& m : h.handle_raw(make_request(code(Op::Flush), n, uf, pod(fl))))
    others.push_back(parse_reply(m));
  Reply r2 = wait_for(u2, &others);
  EXPECT_EQ(r2.error(), 0);
  ASSERT_EQ(others.size(), 1u);
  EXPECT_EQ(others[0].hdr.unique, uf);
  EXPECT_EQ(others[0].error(), 0);
  EXPECT_EQ(h.call(Op::Setlk, n, lk_body(fa, owner_a, F_WRLCK)).error(), EAGAIN)
      << "owner b holds the lock now";

  // 3. Pending at shutdown: answered with EINTR.
  uint64_t u3 = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlkw), n, u3, lk_body(fa, owner_a, F_WRLCK)))
                  .empty());
  h.session().shutdown();
  others.clear();
  EXPECT_EQ(wait_for(u3, &others).error(), EINTR);
  h.release(n, fa);
  h.release(n, fb);
}

// A deferred request is counted once, when it is answered, with the errno it got.
TEST_F(SessionLocks, DeferredWaitIsRecordedWhenAnsweredWithItsErrno) {
  ASSERT_TRUE(write_file(h.src("lock"), "x"));
  auto n = h.lookup(kRootId, "lock").nodeid;
  uint64_t fa = h.open(n, O_RDWR), fb = h.open(n, O_RDWR);
  ASSERT_EQ(h.call(Op::Setlk, n, lk_body(fa, 0xa, F_WRLCK)).error(), 0);
  const OpcodeStats& st = h.session().stats()[code(Op::Setlkw)];
  uint64_t u = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlkw), n, u, lk_body(fb, 0xb, F_WRLCK))).empty());
  EXPECT_EQ(h.session().deferred(), 1u);
  EXPECT_EQ(st.requests.load(), 0u) << "not counted before it is answered";
  std::vector<Reply> others;
  interrupt(u, &others);
  EXPECT_EQ(wait_for(u, &others).error(), EINTR);
  EXPECT_TRUE(others.empty());
  EXPECT_EQ(st.requests.load(), 1u);
  EXPECT_EQ(st.errors.load(), 1u);
  EXPECT_EQ(st.errors_by_errno[EINTR].load(), 1u);
  EXPECT_EQ(h.session().deferred(), 0u);
  h.release(n, fa);
  h.release(n, fb);
}

// Takes a lock through fa so that a SETLKW through fb must wait; returns fb's SETLKW reply.
Reply blocked_setlkw(SessionHarness& h, uint64_t* n, uint64_t* fa, uint64_t* fb) {
  EXPECT_EQ(h.init().error(), 0);
  EXPECT_TRUE(write_file(h.src("lock"), "x"));
  *n = h.lookup(kRootId, "lock").nodeid;
  *fa = h.open(*n, O_RDWR);
  *fb = h.open(*n, O_RDWR);
  EXPECT_EQ(h.call(Op::Setlk, *n, lk_body(*fa, 0xa, F_WRLCK)).error(), 0);
  return h.call(Op::Setlkw, *n, lk_body(*fb, 0xb, F_WRLCK));
}

// std::thread throws when no thread can start: the SETLKW is answered ENOLCK at once
// (it used to be marked answered first: no reply ever came and shutdown() never returned).
TEST(SessionDeferred, LockWaitWhoseThreadCannotStartIsAnsweredEnolck) {
  SessionOptions opts;
  int attempts = 0;
  opts.start_thread = [&attempts](std::function<void()>) {
    ++attempts;
    throw std::system_error(EAGAIN, std::generic_category(), "pthread_create");
  };
  SessionHarness h(opts);
  uint64_t n = 0, fa = 0, fb = 0;
  EXPECT_EQ(blocked_setlkw(h, &n, &fa, &fb).error(), ENOLCK);
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(h.session().deferred(), 0u);
  EXPECT_EQ(h.session().stats()[code(Op::Setlkw)].errors_by_errno[ENOLCK].load(), 1u);
  h.session().shutdown();  // returns: no wait is left behind
  h.release(n, fa);
  h.release(n, fb);
}

// Deferred work dropped without running drops the DeferredReply unanswered: the backstop
// answers EIO, never silence, and the wait leaves the session.
TEST(SessionDeferred, DeferredReplyDroppedUnansweredAnswersEio) {
  SessionOptions opts;
  opts.start_thread = [](std::function<void()> work) { (void)work; };
  SessionHarness h(opts);
  uint64_t n = 0, fa = 0, fb = 0;
  EXPECT_EQ(blocked_setlkw(h, &n, &fa, &fb).error(), EIO);
  EXPECT_EQ(h.session().deferred(), 0u);
  h.session().shutdown();
  h.release(n, fa);
  h.release(n, fb);
}

// Queue balancing (accel/offload.h): FSYNC is served inline or on the offload pool. With
// probes of one measurement, the first FSYNC takes the guess (offload: answered later by a
// pool thread through its deferred reply) and the second is the probe of the other way:
// inline, answered at once.
TEST(SessionDeferred, FsyncIsOffloadedOrServedInlineAsTheSchedulerProbes) {
  SessionHarness h(SessionOptions{});
  efuse::accel::Settings s;
  s.probe = 1;
  h.session().set_adaptive(s);
  ASSERT_EQ(h.init().error(), 0);
  ASSERT_TRUE(write_file(h.src("f"), "data"));
  uint64_t n = h.lookup(kRootId, "f").nodeid;
  uint64_t fh = h.open(n, O_RDWR);
  k::fuse_fsync_in in{fh, 0, 0};
  uint64_t unique = h.next_unique();
  // An offloaded FSYNC is answered by a pool thread: usually after handle_raw() returned,
  // but on a busy host it may be before (the report below says it was offloaded).
  auto now = h.handle_raw(make_request(code(Op::Fsync), n, unique, pod(in)));
  ASSERT_TRUE(efuse::testing::eventually([&] { return h.session().deferred() == 0; }));
  std::vector<Reply> replies;
  for (const auto& raw : now) replies.push_back(parse_reply(raw));
  if (replies.empty()) {
    h.getattr(n);  // collects the FSYNC's reply as a stray one
    replies = h.take_stray();
  }
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].hdr.unique, unique);
  EXPECT_EQ(replies[0].error(), 0);

  EXPECT_EQ(h.call(Op::Fsync, n, pod(in)).error(), 0) << "the probe of inline answers at once";

  efuse::accel::OffloadReport r = h.session().offload_report();
  const auto& fsync = r.served[static_cast<size_t>(efuse::accel::Blocking::Fsync)];
  EXPECT_EQ(fsync[1][static_cast<size_t>(efuse::accel::Pick::Guess)], 1u);
  EXPECT_EQ(fsync[0][static_cast<size_t>(efuse::accel::Pick::Probe)], 1u);
  // Both ways measured: the probe is complete and committed to one of them.
  const auto& e = r.engines[static_cast<size_t>(efuse::accel::Blocking::Fsync)];
  EXPECT_EQ(e.phase, efuse::accel::Phase::Commit);
  EXPECT_GE(e.predicted[0], 0);
  EXPECT_GE(e.predicted[1], 0);
  EXPECT_EQ(h.session().stats()[code(Op::Fsync)].requests.load(), 2u);
  OffloadPool::Stats p = h.session().offload_pool_stats();
  EXPECT_EQ(p.submitted, 1u);
  EXPECT_EQ(p.rejected, 0u);
  EXPECT_LE(p.threads, p.max_threads);
  h.release(n, fh);
  h.session().shutdown();
}

// An offloaded FSYNC that no pool thread ever runs (the thread's start kept its body and
// dropped it) is answered EIO by its token's backstop when the session shuts down, and
// shutdown() does not wait for it forever.
TEST(SessionDeferred, OffloadedFsyncDroppedUnrunAnswersEio) {
  std::vector<std::function<void()>> kept;
  SessionOptions opts;
  opts.start_thread = [&kept](std::function<void()> body) { kept.push_back(std::move(body)); };
  SessionHarness h(opts);
  ASSERT_EQ(h.init().error(), 0);
  ASSERT_TRUE(write_file(h.src("f"), "data"));
  uint64_t n = h.lookup(kRootId, "f").nodeid;
  uint64_t fh = h.open(n, O_RDWR);
  k::fuse_fsync_in in{fh, 0, 0};
  uint64_t unique = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Fsync), n, unique, pod(in))).empty());
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(h.session().deferred(), 1u);
  kept.clear();  // the thread never runs
  h.session().shutdown();
  auto sent = h.transport().take();
  ASSERT_EQ(sent.size(), 1u);
  Reply r = parse_reply(sent[0]);
  EXPECT_EQ(r.hdr.unique, unique);
  EXPECT_EQ(r.error(), EIO);
  EXPECT_EQ(h.session().deferred(), 0u);
  EXPECT_EQ(h.session().stats()[code(Op::Fsync)].errors_by_errno[EIO].load(), 1u);
}

// A truncating CREATE and a size-changing SETATTR go through the scheduler too; offloaded,
// their deferred replies carry the reply body (entry and open; attributes) a pool thread
// built. With probes of one: the first is inline (the guess), the second offloaded.
TEST(SessionDeferred, OffloadedCreateAndSetattrCarryTheirReplies) {
  SessionHarness h(SessionOptions{});
  efuse::accel::Settings s;
  s.probe = 1;
  h.session().set_adaptive(s);
  ASSERT_EQ(h.init().error(), 0);
  ASSERT_TRUE(write_file(h.src("t"), std::string(100000, 'x')));
  auto create = [&](uint64_t id) {
    k::fuse_create_in c{O_RDWR | O_CREAT | O_TRUNC, 0644, 0, 0};
    return h.handle_raw(make_request(code(Op::Create), kRootId, id, pod(c) + cstr("t")));
  };
  auto first = create(h.next_unique());
  ASSERT_EQ(first.size(), 1u) << "the guess: inline";
  auto e1 = parse_reply(first[0]).as<k::fuse_entry_out>();
  EXPECT_EQ(e1.attr.size, 0u);
  ASSERT_TRUE(write_file(h.src("t"), std::string(5000, 'y')));
  // Offloaded: answered by a pool thread, which may do so before handle_raw() returns (a
  // busy host); so the reply is looked for in both places, and the decision in the report.
  auto offloaded = [&](efuse::accel::Blocking kind) {
    const efuse::accel::OffloadReport rep = h.session().offload_report();
    uint64_t n = 0;
    for (uint64_t v : rep.served[static_cast<size_t>(kind)][1]) n += v;
    return n;
  };
  auto deferred_reply = [&](std::vector<std::string> now) {
    EXPECT_TRUE(efuse::testing::eventually([&] { return h.session().deferred() == 0; }));
    for (auto& later : h.transport().take()) now.push_back(std::move(later));
    return now;
  };
  uint64_t unique = h.next_unique();
  auto sent = deferred_reply(create(unique));
  EXPECT_EQ(offloaded(efuse::accel::Blocking::Create), 1u) << "the probe: offloaded";
  ASSERT_EQ(sent.size(), 1u);
  Reply r = parse_reply(sent[0]);
  ASSERT_EQ(r.hdr.unique, unique);
  ASSERT_EQ(r.error(), 0);
  ASSERT_EQ(r.payload.size(), sizeof(k::fuse_entry_out) + sizeof(k::fuse_open_out));
  auto e2 = r.as<k::fuse_entry_out>();
  EXPECT_EQ(e2.nodeid, e1.nodeid);
  EXPECT_EQ(e2.attr.size, 0u) << "truncated";
  auto o2 = r.as<k::fuse_open_out>(sizeof(k::fuse_entry_out));
  EXPECT_NE(o2.fh, 0u);

  auto truncate = [&](uint64_t id, uint64_t size) {
    k::fuse_setattr_in sa{};
    sa.valid = k::kFattrSize;
    sa.size = size;
    return h.handle_raw(make_request(code(Op::Setattr), e1.nodeid, id, pod(sa)));
  };
  auto t1 = truncate(h.next_unique(), 12345);
  ASSERT_EQ(t1.size(), 1u) << "the guess: inline";
  EXPECT_EQ(parse_reply(t1[0]).as<k::fuse_attr_out>().attr.size, 12345u);
  unique = h.next_unique();
  sent = deferred_reply(truncate(unique, 777));
  EXPECT_EQ(offloaded(efuse::accel::Blocking::Setattr), 1u) << "the probe: offloaded";
  ASSERT_EQ(sent.size(), 1u);
  r = parse_reply(sent[0]);
  EXPECT_EQ(r.hdr.unique, unique);
  EXPECT_EQ(r.error(), 0);
  EXPECT_EQ(r.as<k::fuse_attr_out>().attr.size, 777u);
  struct stat st;
  ASSERT_EQ(::stat(h.src("t").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 777);
  // A chmod (no size change) is never offloaded: answered at once, not counted.
  k::fuse_setattr_in chmod{};
  chmod.valid = k::kFattrMode;
  chmod.mode = 0600;
  EXPECT_EQ(h.call(Op::Setattr, e1.nodeid, pod(chmod)).error(), 0);
  efuse::accel::OffloadReport rep = h.session().offload_report();
  uint64_t setattrs = 0;
  for (const auto& path : rep.served[static_cast<size_t>(efuse::accel::Blocking::Setattr)])
    for (uint64_t v : path) setattrs += v;
  EXPECT_EQ(setattrs, 2u);
  h.release(e1.nodeid, o2.fh);
  h.release(e1.nodeid, parse_reply(first[0]).as<k::fuse_open_out>(sizeof(k::fuse_entry_out)).fh);
  h.session().shutdown();
}

// flock with server-side locks: close() answers after FLUSH, the lock goes with the RELEASE
// the kernel sends afterwards, and another worker may serve a later LOCK_NB first. Natively
// the close has dropped the lock by then, so the later request waits for that RELEASE.
TEST_F(SessionLocks, NonBlockingFlockWaitsForTheReleaseOfAClosedHolder) {
  ASSERT_TRUE(write_file(h.src("lock"), "x"));
  auto n = h.lookup(kRootId, "lock").nodeid;
  auto flock_body = [](uint64_t fh, uint32_t type) {
    k::fuse_lk_in in{};
    in.fh = fh;
    in.lk = {0, INT64_MAX, type, 0};
    in.lk_flags = k::kLkFlock;
    return pod(in);
  };
  auto flush = [&](uint64_t fh) {
    k::fuse_flush_in fl{};
    fl.fh = fh;
    EXPECT_EQ(h.call(Op::Flush, n, pod(fl)).error(), 0);
  };
  uint64_t fa = h.open(n, O_RDONLY), fc = h.open(n, O_RDONLY);
  ASSERT_EQ(h.call(Op::Setlk, n, flock_body(fa, F_WRLCK)).error(), 0);

  // Held and not closed: the conflict is answered at once.
  EXPECT_EQ(h.call(Op::Setlk, n, flock_body(fc, F_WRLCK)).error(), EAGAIN);

  // 1. Closed (FLUSH): the request waits and is granted once the RELEASE drops the lock.
  flush(fa);
  uint64_t u1 = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlk), n, u1, flock_body(fc, F_WRLCK))).empty())
      << "a LOCK_NB behind a closed holder waits for its RELEASE";
  k::fuse_release_in rel{};
  rel.fh = fa;
  rel.release_flags = k::kReleaseFlockUnlock;
  std::vector<Reply> others;
  for (const std::string& m : h.handle_raw(make_request(code(Op::Release), n, h.next_unique(),
                                                        pod(rel))))
    others.push_back(parse_reply(m));
  Reply r1 = wait_for(u1, &others);
  EXPECT_TRUE(r1.present);
  EXPECT_EQ(r1.error(), 0);
  ASSERT_EQ(others.size(), 1u);
  EXPECT_EQ(others[0].error(), 0) << "the RELEASE";

  // 2. Closed but still open elsewhere (a dup): EAGAIN once the grace period ends, and the
  //    next asker is not kept waiting for the same close again.
  uint64_t fd2 = h.open(n, O_RDONLY);
  flush(fc);
  uint64_t u2 = h.next_unique();
  EXPECT_TRUE(h.handle_raw(make_request(code(Op::Setlk), n, u2, flock_body(fd2, F_RDLCK))).empty());
  others.clear();
  Reply r2 = wait_for(u2, &others);
  EXPECT_TRUE(r2.present);
  EXPECT_EQ(r2.error(), EAGAIN);
  EXPECT_TRUE(others.empty());
  EXPECT_EQ(h.call(Op::Setlk, n, flock_body(fd2, F_RDLCK)).error(), EAGAIN);

  // 3. Unlocked holders are forgotten: a FLUSH of fc after LOCK_UN makes no one wait.
  ASSERT_EQ(h.call(Op::Setlk, n, flock_body(fc, F_UNLCK)).error(), 0);
  ASSERT_EQ(h.call(Op::Setlk, n, flock_body(fd2, F_WRLCK)).error(), 0);
  EXPECT_EQ(h.call(Op::Setlk, n, flock_body(fc, F_RDLCK)).error(), EAGAIN);
  h.release(n, fc);
  h.release(n, fd2);
}

}  // namespace
}  // namespace fuse::testing

namespace fuse::testing {
namespace {

// Notifications are connection-wide: they go through the Connection, never a request's
// Transport, and only after INIT.
TEST(SessionConnection, NotificationsGoThroughTheConnection) {
  SessionHarness h;
  EXPECT_EQ(h.session().notify_inval_inode(k::kRootId, 0, 0), -ENOTCONN) << "before INIT";
  ASSERT_EQ(h.init().error(), 0);
  EXPECT_EQ(h.session().notify_inval_inode(k::kRootId, 0, 0), 0);
  EXPECT_EQ(h.session().notify_inval_entry(k::kRootId, "name"), 0);
  EXPECT_TRUE(h.transport().take().empty());
  auto sent = h.connection().notifications();
  ASSERT_EQ(sent.size(), 2u);
  k::fuse_out_header oh{};
  std::memcpy(&oh, sent[0].data(), sizeof oh);
  EXPECT_EQ(oh.unique, 0u);
  EXPECT_EQ(oh.error, static_cast<int32_t>(k::NotifyCode::InvalInode));
  EXPECT_EQ(oh.len, sent[0].size());
  std::memcpy(&oh, sent[1].data(), sizeof oh);
  EXPECT_EQ(oh.error, static_cast<int32_t>(k::NotifyCode::InvalEntry));
  EXPECT_EQ(oh.len, sent[1].size());
  EXPECT_EQ(h.session().notifications(), 2u);
}

// An invalidation the kernel refuses is returned, counted by kind and logged once; ENOENT
// (the kernel forgot the object meanwhile) is no failure.
TEST(SessionConnection, RefusedInvalidationsAreCountedByKind) {
  using Kind = Session::InvalKind;
  SessionHarness h;
  ASSERT_EQ(h.init().error(), 0);
  h.connection().set_notify_result(-ENOENT);
  EXPECT_EQ(h.session().notify_inval_inode(k::kRootId, 0, 0), -ENOENT);
  EXPECT_EQ(h.session().notify_inval_entry(k::kRootId, "a"), -ENOENT);
  EXPECT_EQ(h.session().invalidation_failures(Kind::Inode), 0u);
  EXPECT_EQ(h.session().invalidation_failures(Kind::Entry), 0u);
  h.connection().set_notify_result(-EIO);
  EXPECT_EQ(h.session().notify_inval_inode(k::kRootId, 0, 0), -EIO);
  EXPECT_EQ(h.session().notify_inval_inode(k::kRootId, -1, 0), -EIO);
  EXPECT_EQ(h.session().notify_inval_entry(k::kRootId, "a"), -EIO);
  EXPECT_EQ(h.session().invalidation_failures(Kind::Inode), 2u);
  EXPECT_EQ(h.session().invalidation_failures(Kind::Entry), 1u);
  EXPECT_EQ(h.session().notifications(), 5u);
}

// A session no channel connected has no backing ids and sends no notifications.
TEST(SessionConnection, WithoutAConnectionNothingConnectionWideHappens) {
  efuse::fs::Filesystem nothing;
  Session s(nothing, SessionOptions{});
  EXPECT_EQ(s.notify_inval_inode(k::kRootId, 0, 0), -ENOTCONN);
  s.shutdown();
  s.shutdown();  // a second call does nothing
}

}  // namespace
}  // namespace fuse::testing

namespace fuse::testing {
namespace {

// A backend that wants only what it is told to, and records the negotiation.
class PickyFs final : public efuse::fs::Filesystem {
 public:
  efuse::fs::Capabilities wants, offered, granted;
  efuse::fs::Capabilities negotiate(const efuse::fs::Capabilities& o) override {
    offered = o;
    return wants;
  }
  void init(const efuse::fs::Capabilities& g) override { granted = g; }
};

k::fuse_init_out init_of(Session& s, uint64_t flags) {
  RecordingTransport t;
  std::vector<char> scratch(4096);
  std::string req = make_request(code(k::Opcode::Init), 0, 1,
                                 init_body(k::kVersion, k::kMinorVersion, flags));
  s.handle(std::span<const char>(req.data(), req.size()), t, std::span<char>(scratch));
  auto sent = t.take();
  if (sent.size() != 1) {
    ADD_FAILURE() << "INIT got " << sent.size() << " replies";
    return {};
  }
  return parse_reply(sent[0]).as<k::fuse_init_out>();
}

uint64_t flags_of(const k::fuse_init_out& o) {
  return o.flags | static_cast<uint64_t>(o.flags2) << 32;
}

// INIT asks the backend what it wants of what the kernel offers (and the mount allows); the
// session no longer chooses the backend's capabilities for it.
TEST(SessionInit, TheBackendChoosesItsCapabilitiesFromWhatIsOffered) {
  PickyFs fs;
  fs.wants.flock_locks = true;  // no POSIX locks, no passthrough, no writeback cache
  SessionOptions opts;
  opts.passthrough = true;
  opts.writeback_cache = false;  // the mount does not allow it: never offered to the backend
  Session s(fs, opts);
  uint64_t granted = flags_of(init_of(s, kKernelFlags));
  EXPECT_TRUE(fs.offered.passthrough && fs.offered.posix_locks && fs.offered.flock_locks);
  EXPECT_FALSE(fs.offered.writeback_cache);
  EXPECT_EQ(granted & k::init::kPosixLocks, 0u);
  EXPECT_EQ(granted & k::init::kPassthrough, 0u);
  EXPECT_EQ(granted & k::init::kWritebackCache, 0u);
  EXPECT_NE(granted & k::init::kFlockLocks, 0u);
  EXPECT_TRUE(fs.granted.flock_locks);
  EXPECT_FALSE(fs.granted.posix_locks || fs.granted.passthrough || fs.granted.writeback_cache);
  EXPECT_NE(granted & k::init::kAsyncRead, 0u) << "the session's own flags are unchanged";
}

// What the backend wants but the kernel does not offer is never granted.
TEST(SessionInit, AWantTheKernelDidNotOfferIsNotGranted) {
  PickyFs fs;
  fs.wants = {true, true, true, true};
  SessionOptions opts;
  opts.writeback_cache = true;
  Session s(fs, opts);
  uint64_t granted = flags_of(init_of(s, kKernelFlags & ~k::init::kPosixLocks & ~k::init::kPassthrough));
  EXPECT_FALSE(fs.offered.posix_locks || fs.offered.passthrough);
  EXPECT_EQ(granted & (k::init::kPosixLocks | k::init::kPassthrough), 0u);
  EXPECT_NE(granted & k::init::kWritebackCache, 0u) << "offered, allowed and wanted";
  EXPECT_TRUE(fs.granted.writeback_cache && fs.granted.flock_locks);
}

}  // namespace
}  // namespace fuse::testing

// The memory backend, driven through the Filesystem interface as the session drives it:
// block pool accounting and ENOSPC, readdir offsets that stay valid while the directory
// changes, rename flags, SEEK_DATA/SEEK_HOLE, fallocate, hard links and lookup counts,
// xattrs and POSIX ACLs.
#include "fs/memory/memory_fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/xattr.h>

#include <gtest/gtest.h>

#include <atomic>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fs/memory/acl.h"
#include "fs/registry.h"

namespace efuse::fs::memory {
namespace {

constexpr uint64_t kRoot = 1;

// Collects entries; holds at most `room` of them per call (a small reply buffer).
class ListSink final : public DirSink {
 public:
  explicit ListSink(bool plus = false, size_t room = 1000) : plus_(plus), room_(room) {}
  bool plus() const override { return plus_; }
  bool fits(std::string_view) const override { return names.size() < room_; }
  bool add(std::string_view name, uint64_t, uint32_t, uint64_t next) override {
    if (!fits(name)) return false;
    names.emplace_back(name);
    last_off = next;
    return true;
  }
  bool add_plus(std::string_view name, const Entry& e, uint64_t next) override {
    if (!fits(name)) return false;
    names.emplace_back(name);
    if (e.ino != 0) nodeids.push_back(e.ino);
    last_off = next;
    return true;
  }
  std::vector<std::string> names;
  std::vector<uint64_t> nodeids;
  uint64_t last_off = 0;

 private:
  bool plus_;
  size_t room_;
};

class MemoryFsTest : public ::testing::Test {
 protected:
  explicit MemoryFsTest(Limits limits = {1 << 20, 1000}) : fs_(limits, Policy{}) {}

  void falloc(uint64_t ino, uint64_t fh, int mode, uint64_t off, uint64_t len) {
    Status s = fs_.fallocate(ctx_, ino, fh, mode, off, len);
    EXPECT_TRUE(s.ok()) << "fallocate mode " << mode << ": " << s.error();
  }

  uint64_t mkfile(uint64_t dir, const std::string& name, mode_t mode = 0644) {
    auto c = fs_.create(ctx_, dir, name, mode, O_RDWR | O_CREAT);
    EXPECT_TRUE(c.ok()) << name << ": " << c.error();
    if (!c.ok()) return 0;
    EXPECT_TRUE(fs_.release(ctx_, c->entry.ino, c->open.fh).ok());
    return c->entry.ino;
  }
  uint64_t open(uint64_t ino) {
    auto o = fs_.open(ctx_, ino, O_RDWR);
    EXPECT_TRUE(o.ok());
    return o.ok() ? o->fh : 0;
  }
  Result<size_t> write(uint64_t ino, uint64_t fh, uint64_t off, const std::string& data) {
    return fs_.write(ctx_, ino, fh, off, std::span<const char>(data.data(), data.size()));
  }
  std::string read(uint64_t ino, uint64_t fh, uint64_t off, size_t n) {
    std::string buf(n, '?');
    auto r = fs_.read(ctx_, ino, fh, off, std::span<char>(buf.data(), buf.size()));
    EXPECT_TRUE(r.ok());
    buf.resize(r.ok() ? *r : 0);
    return buf;
  }
  std::vector<std::string> list(uint64_t dir) {
    auto d = fs_.opendir(ctx_, dir, 0);
    EXPECT_TRUE(d.ok());
    ListSink sink;
    EXPECT_TRUE(fs_.readdir(ctx_, dir, d->fh, 0, sink).ok());
    EXPECT_TRUE(fs_.releasedir(ctx_, dir, d->fh).ok());
    return sink.names;
  }

  Context ctx_;
  MemoryFs fs_;
};

TEST_F(MemoryFsTest, WritesTakeBlocksFromThePoolAndGiveThemBack) {
  uint64_t ino = mkfile(kRoot, "f");
  uint64_t fh = open(ino);
  EXPECT_EQ(fs_.pool().used_bytes(), 0u);
  ASSERT_EQ(*write(ino, fh, 0, std::string(5000, 'a')), 5000u);
  EXPECT_EQ(fs_.pool().used_bytes(), 2 * kBlockSize);  // 5000 bytes: two 4 KiB blocks
  ASSERT_EQ(*write(ino, fh, 3 * kBlockSize, "x"), 1u);  // a hole in between
  EXPECT_EQ(fs_.pool().used_bytes(), 3 * kBlockSize);
  EXPECT_EQ(read(ino, fh, 2 * kBlockSize, 4), std::string(4, '\0'));
  auto a = fs_.getattr(ctx_, ino, nullptr);
  EXPECT_EQ(a->attr.st_size, static_cast<off_t>(3 * kBlockSize + 1));
  EXPECT_EQ(a->attr.st_blocks, 3 * 8);

  SetattrRequest shrink;
  shrink.set_size = true;
  shrink.size = 100;
  ASSERT_TRUE(fs_.setattr(ctx_, ino, shrink).ok());
  EXPECT_EQ(fs_.pool().used_bytes(), kBlockSize);
  shrink.size = 4096;  // grows again: the tail past 100 reads as zeros, not old data
  ASSERT_TRUE(fs_.setattr(ctx_, ino, shrink).ok());
  EXPECT_EQ(read(ino, fh, 100, 10), std::string(10, '\0'));

  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
  ASSERT_TRUE(fs_.unlink(ctx_, kRoot, "f").ok());
  fs_.forget(ino, 1);  // the kernel lets go: the inode and its blocks go
  EXPECT_EQ(fs_.pool().used_bytes(), 0u);
  EXPECT_EQ(fs_.pool().inodes(), 1u);  // the root
}

TEST_F(MemoryFsTest, ENOSPCBeyondTheLimitIsCleanAndTheMountGoesOn) {
  uint64_t ino = mkfile(kRoot, "big");
  uint64_t fh = open(ino);
  // 1 MiB limit: 256 blocks. A write beyond is short, the next one ENOSPC.
  std::string mib(1 << 20, 'z');
  auto w = write(ino, fh, 0, mib + "more");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, mib.size());
  auto full = write(ino, fh, mib.size(), "more");
  EXPECT_EQ(full.error(), ENOSPC);
  EXPECT_GE(fs_.pool().enospc(), 1u);
  auto st = fs_.statfs(ctx_, kRoot);
  EXPECT_EQ(st->f_bfree, 0u);
  EXPECT_EQ(st->f_blocks, 256u);
  // Data already written is intact; freeing space makes writes work again.
  EXPECT_EQ(read(ino, fh, 1000, 3), "zzz");
  falloc(ino, fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 8192);
  EXPECT_EQ(fs_.statfs(ctx_, kRoot)->f_bfree, 2u);
  EXPECT_EQ(*write(ino, fh, mib.size(), "more"), 4u);
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
}

TEST_F(MemoryFsTest, TheInodeLimitRefusesWithENOSPC) {
  MemoryFs small({1 << 20, 3}, Policy{});  // the root and two more
  auto a = small.mkdir(ctx_, kRoot, "a", 0755);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(small.symlink(ctx_, kRoot, "b", "a").ok());
  EXPECT_EQ(small.mknod(ctx_, kRoot, "c", S_IFIFO | 0644, 0).error(), ENOSPC);
  EXPECT_EQ(small.create(ctx_, kRoot, "d", 0644, O_CREAT | O_RDWR).error(), ENOSPC);
  EXPECT_EQ(small.statfs(ctx_, kRoot)->f_ffree, 0u);
  EXPECT_EQ(small.pool().enospc(), 2u);
  // An inode is free again once it has no name and the kernel forgot it.
  EXPECT_TRUE(small.rmdir(ctx_, kRoot, "a").ok());
  EXPECT_EQ(small.mknod(ctx_, kRoot, "c", S_IFIFO | 0644, 0).error(), ENOSPC);
  small.forget(a->ino, 1);
  EXPECT_TRUE(small.mknod(ctx_, kRoot, "c", S_IFIFO | 0644, 0).ok());
}

TEST_F(MemoryFsTest, LimitsCanBeRaisedAndLoweredLive) {
  uint64_t ino = mkfile(kRoot, "f");
  uint64_t fh = open(ino);
  ASSERT_EQ(*write(ino, fh, 0, std::string(8192, 'a')), 8192u);
  fs_.set_limits({4096, 64});  // below what is in use: nothing is taken away...
  EXPECT_EQ(read(ino, fh, 0, 1), "a");
  EXPECT_EQ(write(ino, fh, 8192, "b").error(), ENOSPC);  // ...new blocks are refused
  EXPECT_EQ(fs_.statfs(ctx_, kRoot)->f_bfree, 0u);
  fs_.set_limits({1 << 20, 64});
  EXPECT_EQ(*write(ino, fh, 8192, "b"), 1u);
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
}

TEST_F(MemoryFsTest, XattrsAreChargedToThePool) {
  MemoryFs tiny({8192, 64}, Policy{});
  auto f = tiny.create(ctx_, kRoot, "f", 0644, O_CREAT | O_RDWR);
  ASSERT_TRUE(f.ok());
  std::string v(3000, 'v');
  ASSERT_TRUE(tiny.setxattr(ctx_, f->entry.ino, "user.a", {v.data(), v.size()}, 0).ok());
  EXPECT_EQ(tiny.pool().used_bytes(), 4096u);
  ASSERT_TRUE(tiny.setxattr(ctx_, f->entry.ino, "user.b", {v.data(), v.size()}, 0).ok());
  EXPECT_EQ(tiny.pool().used_bytes(), 8192u);
  EXPECT_EQ(tiny.setxattr(ctx_, f->entry.ino, "user.c", {v.data(), v.size()}, 0).error(), ENOSPC);
  ASSERT_TRUE(tiny.removexattr(ctx_, f->entry.ino, "user.a").ok());
  EXPECT_EQ(tiny.pool().used_bytes(), 4096u);
  EXPECT_EQ(tiny.setxattr(ctx_, f->entry.ino, "user.b", {v.data(), v.size()}, XATTR_CREATE).error(),
            EEXIST);
  EXPECT_EQ(tiny.setxattr(ctx_, f->entry.ino, "user.z", {v.data(), v.size()}, XATTR_REPLACE).error(),
            ENODATA);
  EXPECT_EQ(tiny.setxattr(ctx_, f->entry.ino, "bogus.x", {v.data(), 1}, 0).error(), EOPNOTSUPP);
  std::string names(64, '\0');
  auto n = tiny.listxattr(ctx_, f->entry.ino, {names.data(), names.size()});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(names.substr(0, *n), std::string("user.b\0", 7));
  EXPECT_EQ(tiny.listxattr(ctx_, f->entry.ino, {names.data(), 3}).error(), ERANGE);
  ASSERT_TRUE(tiny.release(ctx_, f->entry.ino, f->open.fh).ok());
}

// READDIR offsets are cookies: a listing read a few entries at a time, with entries created
// and removed between the calls, returns every entry that existed throughout exactly once.
TEST_F(MemoryFsTest, ReaddirOffsetsStayValidWhileTheDirectoryChanges) {
  auto d = fs_.mkdir(ctx_, kRoot, "d", 0755);
  ASSERT_TRUE(d.ok());
  uint64_t dir = d->ino;
  for (int i = 0; i < 40; ++i) mkfile(dir, "keep" + std::to_string(i));
  for (int i = 0; i < 20; ++i) mkfile(dir, "gone" + std::to_string(i));
  auto h = fs_.opendir(ctx_, dir, 0);
  std::multiset<std::string> seen;
  uint64_t off = 0;
  for (int round = 0;; ++round) {
    ListSink sink(false, 7);
    ASSERT_TRUE(fs_.readdir(ctx_, dir, h->fh, off, sink).ok());
    if (sink.names.empty()) break;
    seen.insert(sink.names.begin(), sink.names.end());
    off = sink.last_off;
    // Between two calls: remove some, add some, rename one.
    if (round < 20) {
      (void)fs_.unlink(ctx_, dir, "gone" + std::to_string(round));
      mkfile(dir, "new" + std::to_string(round));
    }
  }
  for (int i = 0; i < 40; ++i) EXPECT_EQ(seen.count("keep" + std::to_string(i)), 1u) << i;
  EXPECT_EQ(seen.count("."), 1u);
  EXPECT_EQ(seen.count(".."), 1u);
  for (const auto& name : seen) EXPECT_EQ(seen.count(name), 1u) << name;  // none twice
  ASSERT_TRUE(fs_.releasedir(ctx_, dir, h->fh).ok());
}

// The same under real concurrency: a writer thread creates and removes names while readers
// page through the listing; entries that exist throughout are each seen exactly once.
TEST_F(MemoryFsTest, ReaddirIsExactUnderConcurrentChanges) {
  MemoryFs fs({1 << 20, 100000}, Policy{});
  auto d = fs.mkdir(ctx_, kRoot, "d", 0755);
  uint64_t dir = d->ino;
  for (int i = 0; i < 200; ++i) {
    auto c = fs.mknod(ctx_, dir, "stable" + std::to_string(i), S_IFREG | 0644, 0);
    ASSERT_TRUE(c.ok());
  }
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    for (int i = 0; !stop.load(); ++i) {
      std::string name = "churn" + std::to_string(i % 50);
      if (!fs.mknod(ctx_, dir, name, S_IFREG | 0644, 0).ok()) (void)fs.unlink(ctx_, dir, name);
    }
  });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop.store(true);
      t.join();
    }
  } join{stop, churn};
  for (int pass = 0; pass < 50; ++pass) {
    std::multiset<std::string> seen;
    uint64_t off = 0;
    uint64_t fh = fs.opendir(ctx_, dir, 0)->fh;
    for (;;) {
      ListSink sink(true, 16);
      ASSERT_TRUE(fs.readdir(ctx_, dir, fh, off, sink).ok());
      if (sink.names.empty()) break;
      seen.insert(sink.names.begin(), sink.names.end());
      off = sink.last_off;
      for (uint64_t id : sink.nodeids) fs.forget(id, 1);  // readdirplus counted them
    }
    ASSERT_TRUE(fs.releasedir(ctx_, dir, fh).ok());
    // Entries that exist throughout: exactly once. A churned name removed and made again
    // during the listing is a new entry and may show twice (POSIX leaves it open).
    for (int i = 0; i < 200; ++i) ASSERT_EQ(seen.count("stable" + std::to_string(i)), 1u);
    EXPECT_EQ(seen.count("."), 1u);
    EXPECT_EQ(seen.count(".."), 1u);
  }
}

TEST_F(MemoryFsTest, RenameFlags) {
  mkfile(kRoot, "a");
  mkfile(kRoot, "b");
  auto d = fs_.mkdir(ctx_, kRoot, "d", 0755);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "a", kRoot, "b", RENAME_NOREPLACE).error(), EEXIST);
  EXPECT_TRUE(fs_.rename(ctx_, kRoot, "a", kRoot, "c", RENAME_NOREPLACE).ok());
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "c", kRoot, "x", RENAME_EXCHANGE).error(), ENOENT);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "c", kRoot, "b", RENAME_EXCHANGE | RENAME_NOREPLACE).error(),
            EINVAL);
  uint64_t b = fs_.lookup(ctx_, kRoot, "b")->ino;
  uint64_t c = fs_.lookup(ctx_, kRoot, "c")->ino;
  // Exchange a file and a directory across directories: ".." moves, link counts follow.
  uint64_t root_links = fs_.getattr(ctx_, kRoot, nullptr)->attr.st_nlink;
  mkfile(d->ino, "inner");
  ASSERT_TRUE(fs_.rename(ctx_, kRoot, "d", kRoot, "b", RENAME_EXCHANGE).ok());
  EXPECT_EQ(fs_.lookup(ctx_, kRoot, "d")->ino, b);
  EXPECT_EQ(fs_.lookup(ctx_, kRoot, "b")->ino, d->ino);
  EXPECT_EQ(fs_.getattr(ctx_, kRoot, nullptr)->attr.st_nlink, root_links);
  ASSERT_TRUE(fs_.rename(ctx_, kRoot, "c", d->ino, "inner", RENAME_EXCHANGE).ok());
  EXPECT_EQ(fs_.lookup(ctx_, d->ino, "inner")->ino, c);
  EXPECT_EQ(fs_.getattr(ctx_, kRoot, nullptr)->attr.st_nlink, root_links);
  // Plain rename replaces, and refuses what POSIX refuses.
  auto e = fs_.mkdir(ctx_, kRoot, "e", 0755);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "c", kRoot, "e", 0).error(), EISDIR);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "e", kRoot, "c", 0).error(), ENOTDIR);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "e", kRoot, "b", 0).error(), ENOTEMPTY);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "b", e->ino, "sub", 0).ok(), true);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "e", d->ino + 1000, "x", 0).error(), ESTALE);
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "e", d->ino, "x", 0).error(), EINVAL);  // below itself
  EXPECT_EQ(fs_.rename(ctx_, kRoot, "c", kRoot, "c2", 1u << 2 /* whiteout */).error(), EINVAL);
  // Listing order is cookie order: exchanges keep the names' cookies, a rename makes one.
  EXPECT_EQ(list(kRoot), (std::vector<std::string>{".", "..", "d", "c", "e"}));
}

TEST_F(MemoryFsTest, SeekDataAndHoleFollowTheBlocks) {
  uint64_t ino = mkfile(kRoot, "sparse");
  uint64_t fh = open(ino);
  ASSERT_EQ(*write(ino, fh, kBlockSize * 2 + 10, "data"), 4u);  // blocks 0-1 holes
  ASSERT_EQ(*write(ino, fh, kBlockSize * 5, "tail"), 4u);       // 3-4 holes
  uint64_t size = kBlockSize * 5 + 4;
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, 0, SEEK_DATA), kBlockSize * 2);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, kBlockSize * 2 + 100, SEEK_DATA), kBlockSize * 2 + 100);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, kBlockSize * 3, SEEK_DATA), kBlockSize * 5);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, 0, SEEK_HOLE), 0u);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, kBlockSize * 2, SEEK_HOLE), kBlockSize * 3);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, kBlockSize * 5, SEEK_HOLE), size);  // EOF is a hole
  EXPECT_EQ(fs_.lseek(ctx_, ino, fh, size, SEEK_DATA).error(), ENXIO);
  EXPECT_EQ(fs_.lseek(ctx_, ino, fh, size, SEEK_HOLE).error(), ENXIO);
  // Punching block 2 makes it a hole; KEEP_SIZE allocation past EOF is not data.
  falloc(ino, fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kBlockSize * 2, kBlockSize);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, 0, SEEK_DATA), kBlockSize * 5);
  falloc(ino, fh, FALLOC_FL_KEEP_SIZE, size, kBlockSize * 4);
  EXPECT_EQ(fs_.getattr(ctx_, ino, nullptr)->attr.st_size, static_cast<off_t>(size));
  EXPECT_EQ(fs_.lseek(ctx_, ino, fh, size, SEEK_DATA).error(), ENXIO);
  // Allocation without KEEP_SIZE grows the file with zeros that are data.
  falloc(ino, fh, 0, 0, kBlockSize);
  EXPECT_EQ(*fs_.lseek(ctx_, ino, fh, 0, SEEK_DATA), 0u);
  EXPECT_EQ(read(ino, fh, 0, 3), std::string(3, '\0'));
  EXPECT_EQ(fs_.fallocate(ctx_, ino, fh, FALLOC_FL_PUNCH_HOLE, 0, 1).error(), EOPNOTSUPP);
  EXPECT_EQ(fs_.fallocate(ctx_, ino, fh, 0x8 /* collapse */, 0, kBlockSize).error(), EOPNOTSUPP);
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
}

TEST_F(MemoryFsTest, PunchHoleZeroesPartialBlocksAndKeepsTheSize) {
  uint64_t ino = mkfile(kRoot, "f");
  uint64_t fh = open(ino);
  ASSERT_EQ(*write(ino, fh, 0, std::string(3 * kBlockSize, 'x')), 3 * kBlockSize);
  falloc(ino, fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 2 * kBlockSize);
  EXPECT_EQ(read(ino, fh, 99, 2), std::string("x\0", 2));
  EXPECT_EQ(read(ino, fh, 2 * kBlockSize + 99, 2), std::string("\0x", 2));
  EXPECT_EQ(fs_.pool().used_bytes(), 2 * kBlockSize);  // block 1 freed, 0 and 2 partly zeroed
  EXPECT_EQ(fs_.getattr(ctx_, ino, nullptr)->attr.st_size, static_cast<off_t>(3 * kBlockSize));
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
}

// Hard links share one inode; it lives while it has a name or the kernel holds it.
TEST_F(MemoryFsTest, HardLinksAndTheInodeLifetime) {
  uint64_t ino = mkfile(kRoot, "a");  // the kernel holds one lookup
  auto l = fs_.link(ctx_, ino, kRoot, "b");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->ino, ino);
  EXPECT_EQ(l->attr.st_nlink, 2u);
  fs_.forget(ino, 2);  // the kernel forgets both entries: the names keep it
  EXPECT_EQ(fs_.referenced(), 1u);  // the root
  EXPECT_EQ(fs_.lookup(ctx_, kRoot, "b")->ino, ino);
  ASSERT_TRUE(fs_.unlink(ctx_, kRoot, "a").ok());
  ASSERT_TRUE(fs_.unlink(ctx_, kRoot, "b").ok());  // no name left, but the kernel holds it
  uint64_t fh = open(ino);
  EXPECT_EQ(*write(ino, fh, 0, "still here"), 10u);  // an unlinked open file works on
  EXPECT_EQ(fs_.getattr(ctx_, ino, nullptr)->attr.st_nlink, 0u);
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
  size_t nodes = fs_.nodes();
  fs_.forget(ino, 1);
  EXPECT_EQ(fs_.nodes(), nodes - 1);
  EXPECT_EQ(fs_.getattr(ctx_, ino, nullptr).error(), ESTALE);
  EXPECT_EQ(fs_.pool().used_bytes(), 0u);
  EXPECT_EQ(fs_.link(ctx_, kRoot, kRoot, "loop").error(), EPERM);
}

TEST_F(MemoryFsTest, UnknownHandlesAreEBADF) {
  uint64_t ino = mkfile(kRoot, "f");
  std::string buf(10, '\0');
  EXPECT_EQ(fs_.read(ctx_, ino, 12345, 0, {buf.data(), buf.size()}).error(), EBADF);
  EXPECT_EQ(write(ino, 12345, 0, "x").error(), EBADF);
  EXPECT_EQ(fs_.release(ctx_, ino, 12345).error(), EBADF);
}

TEST_F(MemoryFsTest, SymlinksDevicesAndNames) {
  auto s = fs_.symlink(ctx_, kRoot, "ln", "some/where");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(S_ISLNK(s->attr.st_mode));
  EXPECT_EQ(s->attr.st_size, 10);
  EXPECT_EQ(*fs_.readlink(ctx_, s->ino), "some/where");
  auto n = fs_.mknod(ctx_, kRoot, "null", S_IFCHR | 0666, makedev(1, 3));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->attr.st_rdev, makedev(1, 3));
  EXPECT_EQ(fs_.mkdir(ctx_, kRoot, std::string(256, 'n'), 0755).error(), ENAMETOOLONG);
  EXPECT_EQ(fs_.lookup(ctx_, kRoot, std::string(256, 'n')).error(), ENAMETOOLONG);
  EXPECT_EQ(fs_.mkdir(ctx_, kRoot, "ln", 0755).error(), EEXIST);
  EXPECT_EQ(fs_.lookup(ctx_, kRoot, "missing").error(), ENOENT);
  EXPECT_EQ(fs_.rmdir(ctx_, kRoot, "ln").error(), ENOTDIR);
  EXPECT_EQ(fs_.unlink(ctx_, kRoot, "missing").error(), ENOENT);
}

TEST_F(MemoryFsTest, OwnershipSetgidDirectoriesAndKillPriv) {
  Context user;
  user.uid = 1000;
  user.gid = 1000;
  user.umask = 022;
  auto d = fs_.mkdir(ctx_, kRoot, "shared", 02777);
  SetattrRequest chgrp;
  chgrp.set_gid = true;
  chgrp.gid = 50;
  ASSERT_TRUE(fs_.setattr(ctx_, d->ino, chgrp).ok());
  // The kernel has already dropped set-group-ID for a caller outside the group (VFS).
  auto f = fs_.create(user, d->ino, "f", 04777, O_CREAT | O_RDWR);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->entry.attr.st_uid, 1000u);
  EXPECT_EQ(f->entry.attr.st_gid, 50u);  // the directory's group
  EXPECT_EQ(f->entry.attr.st_mode & 07777, 04755u);  // the umask applied
  auto sub = fs_.mkdir(user, d->ino, "sub", 0777);
  EXPECT_EQ(sub->attr.st_mode & 07777, 02755u);  // directories inherit set-group-ID
  // A write by a caller without CAP_FSETID clears set-user-ID.
  Context writer = user;
  writer.kill_suidgid = true;
  auto w = fs_.write(writer, f->entry.ino, f->open.fh, 0, std::span<const char>("x", 1));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(fs_.getattr(ctx_, f->entry.ino, nullptr)->attr.st_mode & 07777, 0755u);
  ASSERT_TRUE(fs_.release(user, f->entry.ino, f->open.fh).ok());
}

acl::Acl parse_acl(const std::string& value) {
  auto a = acl::parse(value);
  EXPECT_TRUE(a.has_value());
  return a.value_or(acl::Acl{});
}

// acl::permits, what efused checks before handing libefuse_intercept.so a data file: the
// kernel's acl_permission_check and posix_acl_permission, without capabilities.
TEST(MemoryAclPermits, ModesAclsAndGroupsAsTheKernelChecksThem) {
  const std::vector<uint32_t> none, g42 = {42};
  const acl::Caller owner{7, 7, &none}, user{1000, 1000, &none}, in42{1000, 1000, &g42},
      root{0, 0, &none};
  constexpr unsigned kRead = 4, kWrite = 2;
  // Modes: owner, owning group (primary or supplementary), other; root is no exception.
  EXPECT_TRUE(acl::permits(owner, 0400, 7, 42, nullptr, kRead));
  EXPECT_FALSE(acl::permits(owner, 0044, 7, 42, nullptr, kRead));  // the owner's bits decide
  EXPECT_FALSE(acl::permits(user, 0640, 7, 42, nullptr, kRead));
  EXPECT_TRUE(acl::permits(in42, 0640, 7, 42, nullptr, kRead));
  EXPECT_FALSE(acl::permits(in42, 0640, 7, 42, nullptr, kWrite));
  EXPECT_TRUE(acl::permits(user, 0604, 7, 42, nullptr, kRead));
  EXPECT_FALSE(acl::permits(root, 0600, 7, 42, nullptr, kRead));
  EXPECT_TRUE(acl::permits(root, 0644, 7, 42, nullptr, kRead));
  // A named user, masked; a named group; other after a group entry that matched.
  const acl::Acl named = {{acl::kUserObj, 6, 0}, {acl::kUser, 6, 1000}, {acl::kGroupObj, 0, 0},
                          {acl::kGroup, 4, 42},  {acl::kMask, 4, 0},     {acl::kOther, 0, 0}};
  EXPECT_TRUE(acl::permits(user, 0640, 7, 9, &named, kRead));
  EXPECT_FALSE(acl::permits(user, 0640, 7, 9, &named, kWrite));  // the mask takes write away
  const acl::Caller other{2000, 2000, &g42}, stranger{2000, 2000, &none};
  EXPECT_TRUE(acl::permits(other, 0640, 7, 9, &named, kRead));
  EXPECT_FALSE(acl::permits(other, 0640, 7, 9, &named, kWrite));
  EXPECT_FALSE(acl::permits(stranger, 0640, 7, 9, &named, kRead));
  const acl::Acl group_no = {{acl::kUserObj, 6, 0}, {acl::kGroupObj, 0, 0}, {acl::kMask, 4, 0},
                             {acl::kOther, 4, 0}};
  EXPECT_FALSE(acl::permits(in42, 0644, 7, 42, &group_no, kRead));  // in a group: not other
  EXPECT_TRUE(acl::permits(stranger, 0644, 7, 42, &group_no, kRead));
  // Group bits (the mask) of 0: the kernel looks at the modes only.
  const acl::Acl masked = {{acl::kUserObj, 6, 0}, {acl::kUser, 4, 1000}, {acl::kGroupObj, 4, 0},
                           {acl::kMask, 0, 0},    {acl::kOther, 4, 0}};
  EXPECT_TRUE(acl::permits(user, 0604, 7, 42, &masked, kRead));
}

TEST_F(MemoryFsTest, PosixAclsSetTheModeAndAreInherited) {
  auto d = fs_.mkdir(ctx_, kRoot, "d", 0755);
  // user::rwx user:1000:r-x group::r-x mask::rwx other::---, as a default ACL.
  acl::Acl def = {{acl::kUserObj, 7, 0}, {acl::kUser, 5, 1000}, {acl::kGroupObj, 5, 0},
                  {acl::kMask, 7, 0},    {acl::kOther, 0, 0}};
  std::string v = acl::format(def);
  EXPECT_EQ(fs_.setxattr(ctx_, d->ino, acl::kDefault, {v.data(), v.size()}, 0).ok(), true);
  Context c;
  c.umask = 077;  // ignored: the default ACL governs
  auto f = fs_.create(c, d->ino, "f", 0666, O_CREAT | O_RDWR);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->entry.attr.st_mode & 0777, 0660u);  // other from the ACL, mask for group
  std::string got(256, '\0');
  auto n = fs_.getxattr(ctx_, f->entry.ino, acl::kAccess, {got.data(), got.size()});
  ASSERT_TRUE(n.ok());
  acl::Acl access = parse_acl(got.substr(0, *n));
  ASSERT_EQ(access.size(), 5u);
  EXPECT_EQ(access[0].perm, 6u);  // user::rw- (masked by the requested 0666)
  EXPECT_EQ(access[3].perm, 6u);  // mask::rw-
  EXPECT_EQ(fs_.getxattr(ctx_, f->entry.ino, acl::kDefault, {}).error(), ENODATA);  // files: none
  auto sub = fs_.mkdir(c, d->ino, "sub", 0777);
  EXPECT_TRUE(fs_.getxattr(ctx_, sub->ino, acl::kDefault, {}).ok());  // directories inherit it

  // chmod updates the ACL's mask; an ACL the mode says in full is not kept.
  SetattrRequest chmod;
  chmod.set_mode = true;
  chmod.mode = 0640;
  ASSERT_TRUE(fs_.setattr(ctx_, f->entry.ino, chmod).ok());
  n = fs_.getxattr(ctx_, f->entry.ino, acl::kAccess, {got.data(), got.size()});
  EXPECT_EQ(parse_acl(got.substr(0, *n))[3].perm, 4u);
  acl::Acl minimal = {{acl::kUserObj, 7, 0}, {acl::kGroupObj, 0, 0}, {acl::kOther, 1, 0}};
  v = acl::format(minimal);
  ASSERT_TRUE(fs_.setxattr(ctx_, f->entry.ino, acl::kAccess, {v.data(), v.size()}, 0).ok());
  EXPECT_EQ(fs_.getattr(ctx_, f->entry.ino, nullptr)->attr.st_mode & 0777, 0701u);
  EXPECT_EQ(fs_.getxattr(ctx_, f->entry.ino, acl::kAccess, {}).error(), ENODATA);
  // Default ACLs belong to directories; malformed values are EINVAL.
  EXPECT_EQ(fs_.setxattr(ctx_, f->entry.ino, acl::kDefault, {v.data(), v.size()}, 0).error(), EACCES);
  EXPECT_EQ(fs_.setxattr(ctx_, f->entry.ino, acl::kAccess, {v.data(), 5}, 0).error(), EINVAL);
  ASSERT_TRUE(fs_.release(c, f->entry.ino, f->open.fh).ok());
}

// The kernel asks (FUSE_SETXATTR_ACL_KILL_SGID) to clear set-group-ID when the caller may
// not keep it; otherwise it stays.
TEST_F(MemoryFsTest, SettingAnAclClearsSetGroupIdWhenTheKernelSaysSo) {
  auto f = fs_.mknod(ctx_, kRoot, "f", S_IFREG | 02775, 0);
  ASSERT_TRUE(f.ok());
  acl::Acl a = {{acl::kUserObj, 7, 0}, {acl::kUser, 7, 1000}, {acl::kGroupObj, 7, 0},
                {acl::kMask, 7, 0},    {acl::kOther, 5, 0}};
  std::string v = acl::format(a);
  ASSERT_TRUE(fs_.setxattr(ctx_, f->ino, acl::kAccess, {v.data(), v.size()}, 0).ok());
  EXPECT_EQ(fs_.getattr(ctx_, f->ino, nullptr)->attr.st_mode & 07777, 02775u);
  Context outsider;
  outsider.kill_sgid = true;
  ASSERT_TRUE(fs_.setxattr(outsider, f->ino, acl::kAccess, {v.data(), v.size()}, 0).ok());
  EXPECT_EQ(fs_.getattr(ctx_, f->ino, nullptr)->attr.st_mode & 07777, 0775u);
}

TEST_F(MemoryFsTest, WithoutADefaultAclTheUmaskApplies) {
  Context c;
  c.umask = 027;
  auto f = fs_.mkdir(c, kRoot, "d", 0777);
  EXPECT_EQ(f->attr.st_mode & 0777, 0750u);
}

TEST_F(MemoryFsTest, ExportsItsMetrics) {
  uint64_t ino = mkfile(kRoot, "f");
  uint64_t fh = open(ino);
  ASSERT_EQ(*write(ino, fh, 0, "abc"), 3u);
  std::map<std::string, double> m;
  for (const Metric& x : fs_.metrics()) m[x.name] = x.value;
  EXPECT_EQ(m.at("efuse_memory_bytes"), 4096);
  EXPECT_EQ(m.at("efuse_memory_bytes_limit"), 1 << 20);
  EXPECT_EQ(m.at("efuse_memory_inodes"), 2);
  EXPECT_EQ(m.at("efuse_memory_inodes_limit"), 1000);
  EXPECT_EQ(m.at("efuse_memory_enospc_total"), 0);
  EXPECT_EQ(m.at("efuse_inodes"), 2);  // the root and f, which the kernel holds
  EXPECT_EQ(m.at("efuse_forget_excess_total"), 0);
  ASSERT_TRUE(fs_.release(ctx_, ino, fh).ok());
}

// ---- cached directory listings (FOPEN_CACHE_DIR, no OPENDIR) -----------------------------

// Records what the backend asks the kernel to forget.
class RecordingInvalidator final : public Invalidator {
 public:
  Status inval_inode(uint64_t ino, bool data_too) override {
    std::lock_guard lk(mu_);
    if (data_too) ++dropped_[ino];
    return {};
  }
  Status inval_entry(uint64_t, std::string_view, bool) override { return {}; }
  size_t pages_dropped(uint64_t ino) {
    std::lock_guard lk(mu_);
    return dropped_[ino];
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, size_t> dropped_;
};

class MemoryListingCacheTest : public MemoryFsTest {
 protected:
  MemoryListingCacheTest() {
    fs_.set_invalidator(&inv_);
    fs_.set_listing_grace_ns(0);  // a drop settles at once unless a test says otherwise
    auto d = fs_.mkdir(ctx_, kRoot, "d", 0755);
    EXPECT_TRUE(d.ok());
    dir_ = d.ok() ? d->ino : 0;
    file_ = mkfile(dir_, "a");
    // With an invalidator (a real mount) the first OPENDIR turns directory handles off: the
    // kernel lists with handle 0 from then on, into its cache.
    EXPECT_EQ(fs_.opendir(ctx_, dir_, O_RDONLY).error(), ENOSYS);
    EXPECT_EQ(fs_.opendir(ctx_, kRoot, O_RDONLY).error(), ENOSYS);
  }
  ~MemoryListingCacheTest() override { fs_.set_invalidator(nullptr); }

  // One listing with handle 0 to its end (the empty reply), as the kernel fills its cache.
  std::vector<std::string> list0(uint64_t dir) {
    std::vector<std::string> names;
    uint64_t off = 0;
    for (;;) {
      ListSink sink(false, 2);
      EXPECT_TRUE(fs_.readdir(ctx_, dir, 0, off, sink).ok());
      if (sink.names.empty()) return names;
      names.insert(names.end(), sink.names.begin(), sink.names.end());
      off = sink.last_off;
    }
  }

  RecordingInvalidator inv_;
  uint64_t dir_ = 0;
  uint64_t file_ = 0;
};

TEST_F(MemoryListingCacheTest, ListsWithHandleZeroAndKeepsASettledListing) {
  EXPECT_EQ(list0(dir_), (std::vector<std::string>{".", "..", "a"}));
  EXPECT_TRUE(fs_.fsyncdir(ctx_, dir_, 0, false).ok());
  // The creation of "a" had settled (grace 0) when the first listing ended: the first drop
  // settled it, and the next complete listing is kept.
  size_t drops = inv_.pages_dropped(dir_);
  EXPECT_EQ(drops, 1u);
  list0(dir_);
  EXPECT_EQ(inv_.pages_dropped(dir_), drops) << "nothing changed: the cached listing stays";
  // A bad handle is still EBADF; handle 0 of a file is ENOTDIR.
  ListSink sink;
  EXPECT_EQ(fs_.readdir(ctx_, dir_, 12345, 0, sink).error(), EBADF);
  EXPECT_EQ(fs_.readdir(ctx_, file_, 0, 0, sink).error(), ENOTDIR);
}

TEST_F(MemoryListingCacheTest, AChangeRacingAListingDropsItUntilItSettles) {
  list0(dir_);
  list0(dir_);
  const size_t settled = inv_.pages_dropped(dir_);
  fs_.set_listing_grace_ns(60'000'000'000);  // nothing settles during this part
  mkfile(dir_, "b");
  list0(dir_);
  EXPECT_EQ(inv_.pages_dropped(dir_), settled + 1) << "a reply built before the change may be in it";
  list0(dir_);
  EXPECT_EQ(inv_.pages_dropped(dir_), settled + 2) << "not settled yet: dropped again";
  ASSERT_TRUE(fs_.unlink(ctx_, dir_, "b").ok());
  fs_.set_listing_grace_ns(0);
  list0(dir_);
  EXPECT_EQ(inv_.pages_dropped(dir_), settled + 3) << "the drop that settles it";
  EXPECT_EQ(list0(dir_), (std::vector<std::string>{".", "..", "a"}));
  EXPECT_EQ(inv_.pages_dropped(dir_), settled + 3) << "settled: the next listing is kept";
}

// A directory moved to another parent gets another "..", which the kernel does not count as
// a change of it: its cached listing is dropped.
TEST_F(MemoryListingCacheTest, ADirectoryMovedElsewhereHasItsListingDropped) {
  auto e = fs_.mkdir(ctx_, kRoot, "e", 0755);
  ASSERT_TRUE(e.ok());
  list0(dir_);
  list0(dir_);
  const size_t before = inv_.pages_dropped(dir_);
  ASSERT_TRUE(fs_.rename(ctx_, kRoot, "d", kRoot, "d2", 0).ok());
  EXPECT_EQ(inv_.pages_dropped(dir_), before) << "same parent: \"..\" is unchanged";
  ASSERT_TRUE(fs_.rename(ctx_, kRoot, "d2", e->ino, "d", 0).ok());
  EXPECT_EQ(inv_.pages_dropped(dir_), before + 1);
  ListSink sink;
  ASSERT_TRUE(fs_.readdir(ctx_, dir_, 0, 1, sink).ok());
  ASSERT_FALSE(sink.names.empty());
  EXPECT_EQ(sink.names[0], "..");
  auto f = fs_.mkdir(ctx_, kRoot, "f", 0755);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(fs_.rename(ctx_, e->ino, "d", kRoot, "f", RENAME_EXCHANGE).ok());
  EXPECT_EQ(inv_.pages_dropped(dir_), before + 2);
  EXPECT_EQ(inv_.pages_dropped(f->ino), 1u);
}

TEST(MemoryBackend, TheRegistryCreatesItAndAppliesNewLimits) {
  std::string error;
  BackendParams p;
  p.memory = {1 << 20, 10};
  auto fs = create_backend("memory", p, &error);
  ASSERT_TRUE(fs.ok()) << error;
  auto* mem = static_cast<MemoryFs*>(fs->get());
  EXPECT_EQ(mem->pool().max_bytes(), 1u << 20);
  p.memory = {2 << 20, 20};
  reconfigure_backend("memory", **fs, p);
  EXPECT_EQ(mem->pool().max_bytes(), 2u << 20);
  EXPECT_EQ(mem->pool().max_inodes(), 20u);
}

TEST(MemoryBackend, DefaultsAreHalfOfRamAndOneInodePerBlock) {
  MemoryFs fs({}, Policy{});
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t half = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
  EXPECT_EQ(fs.pool().max_bytes(), half / kBlockSize * kBlockSize);
  EXPECT_EQ(fs.pool().max_inodes(), fs.pool().max_bytes() / kBlockSize);
}

}  // namespace
}  // namespace efuse::fs::memory

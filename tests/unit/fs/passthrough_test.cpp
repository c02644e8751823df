// PassthroughFs called directly (no session): inode lifetime and identity, renames, sparse
// files, POSIX record locks, and what keeps the kernel's cached directory listings exact.
#include "fs/passthrough/passthrough_fs.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../testing/eventually.h"
#include "../testing/temp_dir.h"

namespace efuse::fs::passthrough {
namespace {

using efuse::testing::eventually;
using efuse::testing::read_file;
using efuse::testing::TempDir;
using efuse::testing::write_file;

constexpr uint64_t kRoot = 1;

class PassthroughTest : public ::testing::Test {
 protected:
  PassthroughTest() {
    src_ = tmp_ / "src";
    EXPECT_EQ(::mkdir(src_.c_str(), 0755), 0);
    fs_ = std::make_unique<PassthroughFs>(src_, Policy{});
    Capabilities caps;
    caps.posix_locks = true;
    caps.flock_locks = true;
    fs_->init(caps);
  }

  std::string src(const std::string& rel) const { return src_ + "/" + rel; }

  uint64_t lookup(uint64_t parent, const std::string& name) {
    auto e = fs_->lookup(ctx_, parent, name);
    EXPECT_TRUE(e.ok()) << "lookup " << name << ": " << strerror(e.error());
    return e.ok() ? e->ino : 0;
  }
  uint64_t open(uint64_t ino, int flags) {
    auto o = fs_->open(ctx_, ino, flags);
    EXPECT_TRUE(o.ok()) << strerror(o.error());
    return o.ok() ? o->fh : ~0ULL;
  }
  void release(uint64_t ino, uint64_t fh) { EXPECT_TRUE(fs_->release(ctx_, ino, fh).ok()); }
  Lock lock(uint32_t type, uint64_t start, uint64_t end) { return Lock{start, end, type, 0}; }

  TempDir tmp_;
  std::string src_;
  std::unique_ptr<PassthroughFs> fs_;
  Context ctx_{getuid(), getgid(), static_cast<uint32_t>(getpid()), 1};
};

TEST_F(PassthroughTest, LookupsAreCountedAndForgetDropsTheNodeid) {
  ASSERT_TRUE(write_file(src("f"), "abc"));
  size_t base = fs_->backend_stats().inodes;
  uint64_t id = lookup(kRoot, "f");
  ASSERT_GE(id, 2u);
  EXPECT_EQ(lookup(kRoot, "f"), id);
  EXPECT_EQ(fs_->backend_stats().inodes, base + 1);

  fs_->forget(id, 1);
  auto a = fs_->getattr(ctx_, id, nullptr);
  ASSERT_TRUE(a.ok()) << "one lookup is left";
  EXPECT_EQ(a->attr.st_size, 3);

  fs_->forget(id, 1);
  EXPECT_EQ(fs_->getattr(ctx_, id, nullptr).error(), ESTALE);
  EXPECT_EQ(fs_->open(ctx_, id, O_RDONLY).error(), ESTALE);
  EXPECT_EQ(fs_->lookup(ctx_, id, "x").error(), ESTALE);
  EXPECT_EQ(fs_->backend_stats().inodes, base);

  // A nodeid is never reused: the kernel may still hold the old one in a stale request.
  uint64_t again = lookup(kRoot, "f");
  EXPECT_GT(again, id);

  // Forgetting more than was looked up, an unknown nodeid, or the root, is harmless.
  fs_->forget(again, 100);
  fs_->forget(123456789, 1);
  fs_->forget(kRoot, 1000);
  EXPECT_TRUE(fs_->getattr(ctx_, kRoot, nullptr).ok());
  EXPECT_EQ(fs_->getattr(ctx_, again, nullptr).error(), ESTALE);
}

TEST_F(PassthroughTest, HardLinksShareANodeid) {
  ASSERT_TRUE(write_file(src("a"), "shared"));
  ASSERT_EQ(::link(src("a").c_str(), src("b").c_str()), 0);
  uint64_t a = lookup(kRoot, "a");
  EXPECT_EQ(lookup(kRoot, "b"), a);

  auto c = fs_->link(ctx_, a, kRoot, "c");
  ASSERT_TRUE(c.ok()) << strerror(c.error());
  EXPECT_EQ(c->ino, a);
  EXPECT_EQ(c->attr.st_nlink, 3u);
  EXPECT_EQ(read_file(src("c")), "shared");
  EXPECT_EQ(fs_->link(ctx_, a, kRoot, "c").error(), EEXIST);
  // Three lookups were counted on the one inode (a, b, c).
  fs_->forget(a, 2);
  EXPECT_TRUE(fs_->getattr(ctx_, a, nullptr).ok());
  fs_->forget(a, 1);
  EXPECT_EQ(fs_->getattr(ctx_, a, nullptr).error(), ESTALE);
}

TEST_F(PassthroughTest, AFileRenamedInTheBackingTreeIsStillReachableByItsNodeid) {
  ASSERT_TRUE(write_file(src("old"), "content"));
  ASSERT_EQ(::mkdir(src("elsewhere").c_str(), 0755), 0);
  uint64_t id = lookup(kRoot, "old");
  struct stat st;
  ASSERT_EQ(::stat(src("old").c_str(), &st), 0);

  ASSERT_EQ(::rename(src("old").c_str(), src("elsewhere/new").c_str()), 0);
  auto a = fs_->getattr(ctx_, id, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->attr.st_ino, st.st_ino);
  uint64_t fh = open(id, O_RDWR);
  char buf[16] = {};
  auto n = fs_->read(ctx_, id, fh, 0, std::span<char>(buf, sizeof buf));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buf, *n), "content");
  ASSERT_TRUE(fs_->write(ctx_, id, fh, 0, std::span<const char>("C", 1)).ok());
  release(id, fh);
  EXPECT_EQ(read_file(src("elsewhere/new")), "Content");

  auto gone = fs_->lookup(ctx_, kRoot, "old");
  EXPECT_EQ(gone.error(), ENOENT);
  EXPECT_EQ(lookup(lookup(kRoot, "elsewhere"), "new"), id) << "same inode, same nodeid";

  // Even unlinked in the backing tree, the held inode answers.
  ASSERT_EQ(::unlink(src("elsewhere/new").c_str()), 0);
  auto orphan = fs_->getattr(ctx_, id, nullptr);
  ASSERT_TRUE(orphan.ok());
  EXPECT_EQ(orphan->attr.st_nlink, 0u);
}

TEST_F(PassthroughTest, RenameNoreplaceAndExchange) {
  ASSERT_TRUE(write_file(src("x"), "X"));
  ASSERT_TRUE(write_file(src("y"), "Y"));
  EXPECT_EQ(fs_->rename(ctx_, kRoot, "x", kRoot, "y", RENAME_NOREPLACE).error(), EEXIST);
  EXPECT_EQ(read_file(src("x")), "X");
  EXPECT_EQ(read_file(src("y")), "Y");

  uint64_t xid = lookup(kRoot, "x");
  EXPECT_TRUE(fs_->rename(ctx_, kRoot, "x", kRoot, "y", RENAME_EXCHANGE).ok());
  EXPECT_EQ(read_file(src("x")), "Y");
  EXPECT_EQ(read_file(src("y")), "X");
  EXPECT_EQ(lookup(kRoot, "y"), xid) << "the nodeid follows the inode, not the name";

  EXPECT_EQ(fs_->rename(ctx_, kRoot, "x", kRoot, "missing", RENAME_EXCHANGE).error(), ENOENT);
  EXPECT_TRUE(fs_->rename(ctx_, kRoot, "x", kRoot, "z", RENAME_NOREPLACE).ok());
  EXPECT_EQ(read_file(src("z")), "Y");
  EXPECT_EQ(fs_->rename(ctx_, kRoot, "z", kRoot, "y", RENAME_NOREPLACE | RENAME_EXCHANGE).error(),
            EINVAL);
  EXPECT_EQ(fs_->rename(ctx_, kRoot, "z", 999999, "y", 0).error(), ESTALE);
}

TEST_F(PassthroughTest, LseekFindsDataAndHoles) {
  const off_t kFar = 1 << 20;
  int fd = ::open(src("sparse").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::string block(4096, 'd');
  ASSERT_EQ(::pwrite(fd, block.data(), block.size(), 0), 4096);
  ASSERT_EQ(::pwrite(fd, block.data(), block.size(), kFar), 4096);
  ASSERT_EQ(::fsync(fd), 0);
  off_t native_hole = ::lseek(fd, 0, SEEK_HOLE);
  ::close(fd);
  if (native_hole != 4096) GTEST_SKIP() << "the temp file system does not report holes";

  uint64_t id = lookup(kRoot, "sparse");
  uint64_t fh = open(id, O_RDONLY);
  auto at = [&](uint64_t off, int whence) { return fs_->lseek(ctx_, id, fh, off, whence); };
  EXPECT_EQ(*at(0, SEEK_DATA), 0u);
  EXPECT_EQ(*at(0, SEEK_HOLE), 4096u);
  EXPECT_EQ(*at(4096, SEEK_DATA), static_cast<uint64_t>(kFar));
  EXPECT_EQ(*at(100000, SEEK_HOLE), 100000u) << "inside the hole";
  EXPECT_EQ(*at(kFar, SEEK_HOLE), static_cast<uint64_t>(kFar + 4096)) << "EOF is a hole";
  EXPECT_EQ(at(kFar + 4096, SEEK_DATA).error(), ENXIO);
  EXPECT_EQ(*at(10, SEEK_SET), 10u);
  EXPECT_EQ(*at(0, SEEK_END), static_cast<uint64_t>(kFar + 4096));
  EXPECT_EQ(at(0, 99).error(), EINVAL);
  release(id, fh);
}

TEST_F(PassthroughTest, PosixLocksOfTwoOwnersConflictAndFlushReleasesThem) {
  ASSERT_TRUE(write_file(src("locked"), std::string(1000, 'l')));
  uint64_t id = lookup(kRoot, "locked");
  uint64_t fa = open(id, O_RDWR);
  uint64_t fb = open(id, O_RDWR);
  const uint64_t A = 0xaaaa, B = 0xbbbb;

  ASSERT_TRUE(fs_->setlk(ctx_, id, fa, A, lock(F_WRLCK, 0, 99)).ok());
  EXPECT_EQ(fs_->setlk(ctx_, id, fb, B, lock(F_WRLCK, 50, 150)).error(), EAGAIN);
  EXPECT_EQ(fs_->setlk(ctx_, id, fb, B, lock(F_RDLCK, 99, 99)).error(), EAGAIN);
  EXPECT_TRUE(fs_->setlk(ctx_, id, fb, B, lock(F_WRLCK, 100, 199)).ok()) << "no overlap";
  // The same owner through another handle does not conflict with itself.
  EXPECT_TRUE(fs_->setlk(ctx_, id, fb, A, lock(F_WRLCK, 0, 49)).ok());

  auto g = fs_->getlk(ctx_, id, fb, B, lock(F_WRLCK, 0, INT64_MAX));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->type, static_cast<uint32_t>(F_WRLCK));
  EXPECT_EQ(g->start, 0u);
  EXPECT_EQ(g->end, 99u);
  auto free_range = fs_->getlk(ctx_, id, fa, A, lock(F_WRLCK, 500, 600));
  ASSERT_TRUE(free_range.ok());
  EXPECT_EQ(free_range->type, static_cast<uint32_t>(F_UNLCK));

  // The locks are real locks on the backing file: a process working on the backing tree
  // directly sees them.
  int native = ::open(src("locked").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(native, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 10;
  fl.l_len = 1;
  EXPECT_EQ(::fcntl(native, F_OFD_SETLK, &fl), -1);
  EXPECT_EQ(errno, EAGAIN);

  // FLUSH by owner A (what close() does) drops all of A's locks on the file; B keeps its own.
  EXPECT_TRUE(fs_->flush(ctx_, id, fa, A).ok());
  EXPECT_TRUE(fs_->setlk(ctx_, id, fb, B, lock(F_WRLCK, 0, 99)).ok());
  EXPECT_EQ(fs_->setlk(ctx_, id, fa, A, lock(F_RDLCK, 150, 150)).error(), EAGAIN);
  // Unlocking works too.
  EXPECT_TRUE(fs_->setlk(ctx_, id, fb, B, lock(F_UNLCK, 0, INT64_MAX)).ok());
  EXPECT_TRUE(fs_->setlk(ctx_, id, fa, A, lock(F_WRLCK, 0, INT64_MAX)).ok());
  EXPECT_TRUE(fs_->flush(ctx_, id, fa, A).ok());
  EXPECT_EQ(::fcntl(native, F_OFD_SETLK, &fl), 0) << "everything released";
  ::close(native);

  // flock() is per open file: two handles conflict.
  EXPECT_TRUE(fs_->flock(ctx_, id, fa, LOCK_EX | LOCK_NB).ok());
  EXPECT_EQ(fs_->flock(ctx_, id, fb, LOCK_EX | LOCK_NB).error(), EWOULDBLOCK);
  EXPECT_TRUE(fs_->flock(ctx_, id, fa, LOCK_UN).ok());
  EXPECT_TRUE(fs_->flock(ctx_, id, fb, LOCK_EX | LOCK_NB).ok());

  EXPECT_EQ(fs_->setlk(ctx_, 999999, fa, A, lock(F_RDLCK, 0, 1)).error(), ESTALE);
  release(id, fa);
  release(id, fb);
}

TEST_F(PassthroughTest, SymlinksAreNeverFollowed) {
  ASSERT_TRUE(write_file(src("target"), "t"));
  ASSERT_EQ(::symlink("target", src("ln").c_str()), 0);
  auto e = fs_->lookup(ctx_, kRoot, "ln");
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(S_ISLNK(e->attr.st_mode));
  auto target = fs_->readlink(ctx_, e->ino);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, "target");
  EXPECT_NE(fs_->open(ctx_, e->ino, O_RDONLY).error(), 0) << "OPEN of a symlink nodeid";
  EXPECT_EQ(fs_->setxattr(ctx_, e->ino, "user.x", std::span<const char>("v", 1), 0).error(),
            EPERM);
  EXPECT_EQ(fs_->getxattr(ctx_, e->ino, "user.x", {}).error(), ENODATA);
}

// CREATE must never follow a symlink at the last component: the kernel resolves symlinks
// itself, and one planted in the backing tree (or appearing behind a stale negative dentry)
// would otherwise let CREATE with O_TRUNC truncate, as root, a file outside the served tree.
// Expected: an error (ELOOP) and the target untouched, with or without the caller's
// O_NOFOLLOW.
TEST_F(PassthroughTest, CreateDoesNotFollowASymlinkOutOfTheTree) {
  std::string outside = tmp_ / "outside";
  ASSERT_EQ(::symlink(outside.c_str(), src("trap").c_str()), 0);
  for (int flags : {O_WRONLY | O_TRUNC, O_WRONLY | O_TRUNC | O_NOFOLLOW}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    ASSERT_TRUE(write_file(outside, "precious"));
    auto c = fs_->create(ctx_, kRoot, "trap", 0644, flags);
    if (c.ok()) {
      (void)fs_->write(ctx_, c->entry.ino, c->open.fh, 0, std::span<const char>("owned", 5));
      release(c->entry.ino, c->open.fh);
    }
    EXPECT_FALSE(c.ok()) << "CREATE followed a symlink";
    EXPECT_EQ(read_file(outside), "precious");
  }
}

// The kernel sends CREATE for a name it believes absent; made behind efused's back before
// the watcher reported it, the name exists. With O_EXCL that is EEXIST, as natively, and the
// file is neither opened nor truncated; without it, the existing file is opened.
TEST_F(PassthroughTest, CreateWithExclFailsOnANameMadeBehindItsBack) {
  ASSERT_TRUE(write_file(src("made"), "outside"));
  auto c = fs_->create(ctx_, kRoot, "made", 0644, O_WRONLY | O_EXCL | O_TRUNC);
  if (c.ok()) release(c->entry.ino, c->open.fh);
  ASSERT_FALSE(c.ok()) << "O_EXCL opened an existing file";
  EXPECT_EQ(c.error(), EEXIST);
  EXPECT_EQ(read_file(src("made")), "outside");
  auto plain = fs_->create(ctx_, kRoot, "made", 0644, O_RDONLY);
  ASSERT_TRUE(plain.ok()) << strerror(plain.error());
  release(plain->entry.ino, plain->open.fh);
  EXPECT_EQ(read_file(src("made")), "outside");
}

// With FUSE_DONT_MASK the kernel passes the caller's umask; it applies unless the parent
// directory has a default ACL, whose entries then shape the mode instead (POSIX.1e).
TEST_F(PassthroughTest, CreationAppliesTheUmaskUnlessTheParentHasADefaultAcl) {
  mode_t saved = ::umask(0);  // as efused runs
  Context c = ctx_;
  c.umask = 022;
  auto plain = fs_->mkdir(c, kRoot, "plain", 0777);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->attr.st_mode & 07777, 0755u);
  auto f = fs_->create(c, plain->ino, "f", 0666, O_RDWR);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->entry.attr.st_mode & 07777, 0644u);
  release(f->entry.ino, f->open.fh);
  auto n = fs_->mknod(c, plain->ino, "n", S_IFIFO | 0666, 0);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->attr.st_mode & 07777, 0644u);

  // A minimal default ACL granting everything: user::rwx, group::rwx, other::rwx.
  ASSERT_EQ(::mkdir(src("acl").c_str(), 0777), 0);
  struct {
    uint32_t version = 2;
    struct { uint16_t tag, perm; uint32_t id; } e[3] = {{0x01, 7, ~0u}, {0x04, 7, ~0u},
                                                       {0x20, 7, ~0u}};
  } acl;
  ASSERT_EQ(::setxattr(src("acl").c_str(), "system.posix_acl_default", &acl, sizeof acl, 0), 0)
      << strerror(errno);
  uint64_t dir = lookup(kRoot, "acl");
  auto g = fs_->create(c, dir, "g", 0666, O_RDWR);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->entry.attr.st_mode & 07777, 0666u) << "umask applied despite a default ACL";
  release(g->entry.ino, g->open.fh);
  ::umask(saved);
}

TEST_F(PassthroughTest, CreateMkdirMknodAndUnlink) {
  auto c = fs_->create(ctx_, kRoot, "new", 0640, O_RDWR);
  ASSERT_TRUE(c.ok()) << strerror(c.error());
  EXPECT_TRUE(S_ISREG(c->entry.attr.st_mode));
  ASSERT_TRUE(fs_->write(ctx_, c->entry.ino, c->open.fh, 0, std::span<const char>("hey", 3)).ok());
  EXPECT_EQ(fs_->getattr(ctx_, c->entry.ino, &c->open.fh)->attr.st_size, 3);
  release(c->entry.ino, c->open.fh);
  EXPECT_EQ(read_file(src("new")), "hey");

  auto d = fs_->mkdir(ctx_, kRoot, "d", 0750);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(S_ISDIR(d->attr.st_mode));
  EXPECT_EQ(fs_->mkdir(ctx_, kRoot, "d", 0750).error(), EEXIST);
  auto n = fs_->mknod(ctx_, d->ino, "node", S_IFREG | 0600, 0);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(fs_->rmdir(ctx_, kRoot, "d").error(), ENOTEMPTY);
  EXPECT_TRUE(fs_->unlink(ctx_, d->ino, "node").ok());
  EXPECT_TRUE(fs_->rmdir(ctx_, kRoot, "d").ok());
  EXPECT_EQ(::access(src("d").c_str(), F_OK), -1);
  // The removed directory's nodeid still answers from its held handle.
  auto a = fs_->getattr(ctx_, d->ino, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(fs_->mkdir(ctx_, d->ino, "inside-removed", 0755).error(), ENOENT);
}

// ---- cached directory listings (FOPEN_CACHE_DIR) -----------------------------------------

// Records what the backend asks the kernel to forget (the watcher thread calls it too).
class RecordingInvalidator final : public Invalidator {
 public:
  Status inval_inode(uint64_t ino, bool data_too) override {
    std::lock_guard lk(mu_);
    inodes_.push_back({ino, data_too});
    return {};
  }
  Status inval_entry(uint64_t parent, std::string_view name, bool) override {
    std::lock_guard lk(mu_);
    entries_.push_back({parent, std::string(name)});
    return {};
  }
  // How often `ino`'s cached pages (a directory's listing) were dropped.
  size_t pages_dropped(uint64_t ino) {
    std::lock_guard lk(mu_);
    size_t n = 0;
    for (const auto& [i, data] : inodes_) n += (i == ino && data);
    return n;
  }
  // How often `ino`'s attributes alone were invalidated.
  size_t attrs_dropped(uint64_t ino) {
    std::lock_guard lk(mu_);
    size_t n = 0;
    for (const auto& [i, data] : inodes_) n += (i == ino && !data);
    return n;
  }
  bool saw_entry(uint64_t parent, const std::string& name) {
    std::lock_guard lk(mu_);
    for (const auto& e : entries_)
      if (e.first == parent && e.second == name) return true;
    return false;
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<uint64_t, bool>> inodes_;
  std::vector<std::pair<uint64_t, std::string>> entries_;
};

// Takes every entry (plain READDIR).
class NameSink final : public DirSink {
 public:
  bool plus() const override { return false; }
  bool fits(std::string_view) const override { return true; }
  bool add(std::string_view name, uint64_t, uint32_t, uint64_t next) override {
    names.emplace_back(name);
    last_off = next;
    return true;
  }
  bool add_plus(std::string_view, const Entry&, uint64_t) override { return false; }
  std::vector<std::string> names;
  uint64_t last_off = 0;
};

class ListingCacheTest : public PassthroughTest {
 protected:
  ListingCacheTest() {
    fs_->set_invalidator(&inv_);
    fs_->set_listing_grace_ns(0);  // a drop settles at once unless a test says otherwise
    EXPECT_EQ(::mkdir(src("d").c_str(), 0755), 0);
    write_file(src("d/a"), "a");
    dir_ = lookup(kRoot, "d");
    // Invalidation is exact: the first OPENDIR turns directory handles off (ENOSYS), and
    // the kernel lists with handle 0 from then on.
    EXPECT_EQ(fs_->opendir(ctx_, dir_, O_RDONLY).error(), ENOSYS);
  }
  ~ListingCacheTest() override { fs_->set_invalidator(nullptr); }

  // Reads the whole listing from offset 0 as the kernel does: until an empty reply.
  std::vector<std::string> list(uint64_t dir = 0) {
    std::vector<std::string> all;
    uint64_t off = 0;
    for (;;) {
      NameSink sink;
      EXPECT_TRUE(fs_->readdir(ctx_, dir ? dir : dir_, 0, off, sink).ok());
      if (sink.names.empty()) return all;
      all.insert(all.end(), sink.names.begin(), sink.names.end());
      off = sink.last_off;
    }
  }
  void create(const std::string& name) {
    auto c = fs_->create(ctx_, dir_, name, 0644, O_WRONLY);
    ASSERT_TRUE(c.ok()) << strerror(c.error());
    release(c->entry.ino, c->open.fh);
  }
  uint64_t drops() { return fs_->backend_stats().listing_drops; }

  RecordingInvalidator inv_;
  uint64_t dir_ = 0;
};

TEST_F(ListingCacheTest, WithoutOpendirDirectoriesAreServedByHandleZero) {
  EXPECT_EQ(fs_->opendir(ctx_, kRoot, O_RDONLY).error(), ENOSYS) << "and stays off";
  auto names = list();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{".", "..", "a"}));
  // A listing that goes on from an offset (the kernel's next getdents) seeks there.
  NameSink first;
  ASSERT_TRUE(fs_->readdir(ctx_, dir_, 0, 0, first).ok());
  ASSERT_EQ(first.names.size(), 3u);
  NameSink rest;
  ASSERT_TRUE(fs_->readdir(ctx_, dir_, 0, 0, rest).ok());
  EXPECT_EQ(rest.names, first.names);
  NameSink end;
  ASSERT_TRUE(fs_->readdir(ctx_, dir_, 0, first.last_off, end).ok());
  EXPECT_TRUE(end.names.empty());
  EXPECT_TRUE(fs_->fsyncdir(ctx_, dir_, 0, false).ok());
  NameSink file;
  EXPECT_EQ(fs_->readdir(ctx_, lookup(dir_, "a"), 0, 0, file).error(), ENOTDIR);
  EXPECT_EQ(fs_->readdir(ctx_, dir_, 7, 0, file).error(), EBADF) << "no handle 7 was opened";
}

TEST_F(ListingCacheTest, AListingWithoutChangesIsKept) {
  EXPECT_EQ(list().size(), 3u);  // ".", "..", "a"
  EXPECT_EQ(list().size(), 3u);
  EXPECT_EQ(inv_.pages_dropped(dir_), 0u);
  EXPECT_EQ(drops(), 0u);
}

TEST_F(ListingCacheTest, AChangeDropsCompletedListingsUntilItIsOlderThanTheGrace) {
  fs_->set_listing_grace_ns(60'000'000'000);  // nothing settles during this test
  list();
  create("b");
  EXPECT_EQ(list().size(), 4u);
  EXPECT_EQ(inv_.pages_dropped(dir_), 1u) << "a reply built before the change may be in it";
  list();
  EXPECT_EQ(inv_.pages_dropped(dir_), 2u) << "within the grace: dropped again";
  EXPECT_EQ(drops(), 2u);
  fs_->set_listing_grace_ns(0);
  list();
  EXPECT_EQ(inv_.pages_dropped(dir_), 3u) << "the drop that settles it";
  list();
  EXPECT_EQ(inv_.pages_dropped(dir_), 3u) << "settled: the next listing is kept";
}

TEST_F(ListingCacheTest, EveryChangeOfEntriesCounts) {
  auto sub = fs_->mkdir(ctx_, dir_, "sub", 0755);
  ASSERT_TRUE(sub.ok());
  list();
  size_t expected = inv_.pages_dropped(dir_);
  auto changing = [&](const char* what, auto change) {
    list();  // settled before the change
    EXPECT_EQ(inv_.pages_dropped(dir_), expected) << what;
    change();
    list();
    EXPECT_EQ(inv_.pages_dropped(dir_), ++expected) << what;
  };
  changing("create", [&] { create("c"); });
  changing("mknod", [&] { ASSERT_TRUE(fs_->mknod(ctx_, dir_, "n", S_IFIFO | 0600, 0).ok()); });
  changing("mkdir", [&] { ASSERT_TRUE(fs_->mkdir(ctx_, dir_, "m", 0755).ok()); });
  changing("symlink", [&] { ASSERT_TRUE(fs_->symlink(ctx_, dir_, "s", "a").ok()); });
  changing("link", [&] { ASSERT_TRUE(fs_->link(ctx_, lookup(dir_, "a"), dir_, "l").ok()); });
  changing("rename within", [&] { ASSERT_TRUE(fs_->rename(ctx_, dir_, "l", dir_, "l2", 0).ok()); });
  changing("rename out", [&] {
    ASSERT_TRUE(fs_->rename(ctx_, dir_, "l2", sub->ino, "l3", 0).ok());
  });
  changing("rename in", [&] {
    ASSERT_TRUE(fs_->rename(ctx_, sub->ino, "l3", dir_, "l4", 0).ok());
  });
  changing("unlink", [&] { ASSERT_TRUE(fs_->unlink(ctx_, dir_, "l4").ok()); });
  changing("rmdir", [&] { ASSERT_TRUE(fs_->rmdir(ctx_, dir_, "m").ok()); });
  // Changes to the attributes of entries do not change the listing.
  ASSERT_TRUE(fs_->setxattr(ctx_, lookup(dir_, "a"), "user.k", std::span<const char>("v", 1), 0).ok() ||
              errno == ENOTSUP);
  list();
  EXPECT_EQ(inv_.pages_dropped(dir_), expected);
}

TEST_F(ListingCacheTest, OutsideChangesDropTheListingBeforeTheKernelGetsTheDirectory) {
  list();
  write_file(src("d/outside"), "x");  // behind efused's back: the watcher reports it
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!inv_.saw_entry(dir_, "outside") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(inv_.saw_entry(dir_, "outside"));
  while (inv_.attrs_dropped(dir_) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // The watcher invalidates the directory's attributes, which the kernel fetches before it
  // lists from its cache again; it leaves the pages alone (a listing may be half way in).
  EXPECT_GE(inv_.attrs_dropped(dir_), 1u);
  EXPECT_EQ(inv_.pages_dropped(dir_), 0u);
  ASSERT_TRUE(fs_->getattr(ctx_, dir_, nullptr).ok());
  EXPECT_EQ(inv_.pages_dropped(dir_), 1u) << "dropped before the attributes went out";
  ASSERT_TRUE(fs_->getattr(ctx_, dir_, nullptr).ok());
  EXPECT_EQ(inv_.pages_dropped(dir_), 1u) << "once";
  EXPECT_EQ(list().size(), 4u);
  EXPECT_EQ(inv_.pages_dropped(dir_), 2u) << "a reply may have raced the change";
  list();
  EXPECT_EQ(inv_.pages_dropped(dir_), 2u) << "settled";
  // A lookup of the directory (its entry in the parent's listing, too) carries them as well.
  write_file(src("d/outside2"), "x");
  while (!inv_.saw_entry(dir_, "outside2") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  while (inv_.attrs_dropped(dir_) < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(lookup(kRoot, "d"), dir_);
  EXPECT_EQ(inv_.pages_dropped(dir_), 3u);
}

TEST_F(PassthroughTest, ListingsAreNotCachedWithoutInvalidation) {
  // Before an invalidator is set (or when a directory cannot be watched) directory opens
  // get handles and no caching; handle 0 names nothing then.
  ASSERT_EQ(::mkdir(src("d").c_str(), 0755), 0);
  uint64_t d = lookup(kRoot, "d");
  auto o = fs_->opendir(ctx_, d, O_RDONLY);
  ASSERT_TRUE(o.ok());
  EXPECT_NE(o->fh, 0u);
  EXPECT_FALSE(o->keep_cache);
  NameSink sink;
  EXPECT_TRUE(fs_->readdir(ctx_, d, o->fh, 0, sink).ok());
  EXPECT_EQ(sink.names.size(), 2u);
  EXPECT_EQ(fs_->readdir(ctx_, d, 0, 0, sink).error(), EBADF);
  EXPECT_EQ(fs_->readdir(ctx_, kRoot, o->fh, 0, sink).error(), ESTALE);
  EXPECT_TRUE(fs_->releasedir(ctx_, 0, o->fh).ok());
  EXPECT_EQ(fs_->releasedir(ctx_, 0, o->fh).error(), EBADF);
}

// ---- attribute and data events of the backing tree ---------------------------------------

class WatcherTest : public PassthroughTest {
 protected:
  WatcherTest() {
    write_file(src("f"), "0123456789");  // before the watch: no events of their own
    write_file(src("marker"), "");
    fs_->set_invalidator(&inv_);
    f_ = lookup(kRoot, "f");
    marker_ = lookup(kRoot, "marker");
  }
  ~WatcherTest() override { fs_->set_invalidator(nullptr); }

  void getattr(uint64_t ino) { EXPECT_TRUE(fs_->getattr(ctx_, ino, nullptr).ok()); }
  // Returns once the watcher has handled every event queued before this call: the kernel
  // gets the marker's attributes again, the marker changes outside, and its invalidation
  // comes after everything queued earlier (events are handled in order).
  void sync_watcher() {
    getattr(marker_);
    size_t before = inv_.attrs_dropped(marker_);
    marker_mode_ ^= 0044;
    ASSERT_EQ(::chmod(src("marker").c_str(), marker_mode_), 0);
    ASSERT_TRUE(eventually([&] { return inv_.attrs_dropped(marker_) > before; },
                           std::chrono::seconds(10)))
        << "the watcher never saw the marker";
  }
  void outside_write(const std::string& data) {
    int fd = ::open(src("f").c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }

  RecordingInvalidator inv_;
  uint64_t f_ = 0, marker_ = 0;
  mode_t marker_mode_ = 0644;
};

TEST_F(WatcherTest, OurOwnAttributeChangesAreNotEchoed) {
  SetattrRequest chmod;
  chmod.set_mode = true;
  chmod.mode = 0600;
  ASSERT_TRUE(fs_->setattr(ctx_, f_, chmod).ok());  // the reply carries the new attributes
  sync_watcher();
  EXPECT_EQ(inv_.attrs_dropped(f_), 0u);
  EXPECT_EQ(inv_.pages_dropped(f_), 0u);
}

TEST_F(WatcherTest, AnOutsideChangeRightAfterOneOfOursIsNotLost) {
  // Both chmods queue an IN_ATTRIB for f before the watcher reads its batch, and inotify
  // merges identical queued events: one event carries both changes.
  SetattrRequest chmod;
  chmod.set_mode = true;
  chmod.mode = 0600;
  ASSERT_TRUE(fs_->setattr(ctx_, f_, chmod).ok());
  ASSERT_EQ(::chmod(src("f").c_str(), 0640), 0);  // behind efused's back
  sync_watcher();
  EXPECT_EQ(inv_.attrs_dropped(f_), 1u) << "the kernel would keep mode 0600 for an hour";
}

TEST_F(WatcherTest, AFileWrittenOnAndOnIsInvalidatedOnceUntilTheKernelAsksAgain) {
  uint64_t fh = open(f_, O_WRONLY);  // open: only its attributes are invalidated
  for (int i = 0; i < 3; ++i) {      // three batches of writes
    outside_write("more");
    sync_watcher();
  }
  EXPECT_EQ(inv_.attrs_dropped(f_), 1u) << "the kernel holds no attributes after the first";
  EXPECT_EQ(inv_.pages_dropped(f_), 0u) << "an open file keeps its pages";
  getattr(f_);  // the kernel asks again: the next change must reach it
  outside_write("again");
  // Through the event, or (writes muted while f is open for writing) the next tick.
  EXPECT_TRUE(eventually([&] { return inv_.attrs_dropped(f_) == 2; }));
  release(f_, fh);
}

TEST_F(WatcherTest, AFileOpenForWritingHasItsWriteEventsMutedUntilItsLastWriterCloses) {
  if (fs_->backend_stats().watch_fanotify_dirs == 0)
    GTEST_SKIP() << "fanotify cannot mark the test directory here: writes come by inotify";
  auto muted = [&] { return fs_->backend_stats().watch_muted_files; };
  uint64_t reader = open(f_, O_RDONLY);
  outside_write("r");
  sync_watcher();
  EXPECT_EQ(muted(), 0u) << "open for reading only: an outside writer's events are heard";
  uint64_t a = open(f_, O_WRONLY), b = open(f_, O_RDWR);
  outside_write("w");  // stands for writes through a passthrough open
  sync_watcher();
  ASSERT_EQ(muted(), 1u);
  // Muted: a write shows at the next tick, when the attributes are compared.
  getattr(f_);
  size_t dropped = inv_.attrs_dropped(f_);
  outside_write("x");
  EXPECT_TRUE(eventually([&] { return inv_.attrs_dropped(f_) > dropped; }));
  release(f_, a);
  sync_watcher();
  EXPECT_EQ(muted(), 1u) << "one writer is left";
  release(f_, b);
  EXPECT_TRUE(eventually([&] { return muted() == 0; }));
  // Heard again, at once: the marker's event comes after f's.
  getattr(f_);
  dropped = inv_.attrs_dropped(f_);
  outside_write("y");
  sync_watcher();
  EXPECT_EQ(inv_.attrs_dropped(f_), dropped + 1);
  release(f_, reader);
}

TEST_F(WatcherTest, AMutedFileForgottenRightAfterItsCloseIsHeardAgain) {
  if (fs_->backend_stats().watch_fanotify_dirs == 0)
    GTEST_SKIP() << "fanotify cannot mark the test directory here: writes come by inotify";
  uint64_t fh = open(f_, O_WRONLY);
  outside_write("w");
  sync_watcher();
  ASSERT_EQ(fs_->backend_stats().watch_muted_files, 1u);
  release(f_, fh);
  fs_->forget(f_, 1);  // before the watcher took the close: the mark must go all the same
  EXPECT_TRUE(eventually([&] { return fs_->backend_stats().watch_muted_files == 0; }));
  uint64_t again = lookup(kRoot, "f");
  getattr(again);
  size_t dropped = inv_.attrs_dropped(again);
  outside_write("y");
  sync_watcher();
  EXPECT_EQ(inv_.attrs_dropped(again), dropped + 1) << "its writes are still muted";
}

TEST_F(WatcherTest, AClosedFileWrittenOutsideLosesItsPagesEveryTime) {
  release(f_, open(f_, O_RDONLY));  // read through the page cache (no passthrough here)
  for (int i = 1; i <= 2; ++i) {
    outside_write("x");
    sync_watcher();
    EXPECT_EQ(inv_.pages_dropped(f_), static_cast<size_t>(i)) << "the kernel may hold pages";
  }
}

TEST_F(WatcherTest, AFileOnlyEverOpenedWithPassthroughHasNoPagesToDrop) {
  Capabilities caps;
  caps.passthrough = true;
  fs_->init(caps);
  release(f_, open(f_, O_WRONLY));  // kernel-direct writes: the kernel caches no pages
  outside_write("x");
  sync_watcher();
  EXPECT_EQ(inv_.pages_dropped(f_), 0u);
  EXPECT_EQ(inv_.attrs_dropped(f_), 1u);
  fs_->passthrough_refused(f_);  // the next open was served through the page cache
  getattr(f_);
  outside_write("y");
  sync_watcher();
  EXPECT_EQ(inv_.pages_dropped(f_), 1u);
}

TEST_F(WatcherTest, WhatTheWatcherDidIsCounted) {
  ASSERT_EQ(::chmod(src("f").c_str(), 0600), 0);
  sync_watcher();
  BackendStats s = fs_->backend_stats();
  EXPECT_EQ(s.watched_dirs, 1u) << "the root, the only directory the kernel knows";
  EXPECT_GE(s.watch_events, 2u);
  EXPECT_GE(s.watch_invalidations, 2u) << "f and the marker";
  EXPECT_EQ(s.watch_overflows, 0u);
  EXPECT_EQ(s.watch_failures, 0u);
}

// ---- shared read-only handles ------------------------------------------------------------

TEST_F(PassthroughTest, WritableOpensAreToldApartFromSharedHandlesOfAnySerial) {
  write_file(src("f"), "x");
  uint64_t ino = lookup(kRoot, "f");
  uint64_t w = open(ino, O_WRONLY), r = open(ino, O_RDONLY);
  EXPECT_TRUE(is_writer(w));
  EXPECT_FALSE(is_writer(r));
  // Serial numbers of shared handles reach bit 62 after 2^30 opens.
  EXPECT_FALSE(is_writer(kSharedFh | kWriterFh | 7));
  release(ino, w);
  release(ino, r);
}

TEST_F(PassthroughTest, PlainReadOnlyOpensShareTheInodeDescriptor) {
  write_file(src("f"), "shared bytes");
  uint64_t ino = lookup(kRoot, "f");
  uint64_t a = open(ino, O_RDONLY), b = open(ino, O_RDONLY | 00100000 /* kernel O_LARGEFILE */);
  ASSERT_TRUE(is_shared(a) && is_shared(b));
  EXPECT_NE(a, b) << "each open has its own handle";
  EXPECT_EQ(fd_of(a), fd_of(b));
  int fd = fd_of(a);
  EXPECT_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_PATH), O_RDONLY) << "readable, not O_PATH";
  char buf[32] = {};
  auto n = fs_->read(ctx_, ino, b, 0, std::span<char>(buf, sizeof buf));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buf, *n), "shared bytes");
  EXPECT_TRUE(fs_->flush(ctx_, ino, a, 1).ok());
  release(ino, a);
  release(ino, b);
  EXPECT_NE(fcntl(fd, F_GETFD), -1) << "release does not close the inode's descriptor";
  EXPECT_EQ(fs_->getattr(ctx_, ino, nullptr)->attr.st_size, 12) << "and it still serves";
}

TEST_F(PassthroughTest, OtherOpensGetTheirOwnDescriptor) {
  write_file(src("f"), "x");
  uint64_t ino = lookup(kRoot, "f");
  for (int flags : {O_RDWR, O_WRONLY, O_RDONLY | O_NOATIME, O_RDONLY | O_NONBLOCK,
                    O_RDONLY | O_SYNC}) {
    uint64_t fh = open(ino, flags);
    EXPECT_FALSE(is_shared(fh)) << std::hex << flags;
    release(ino, fh);
    EXPECT_EQ(fcntl(fd_of(fh), F_GETFD), -1) << "a private descriptor is closed at release";
  }
}

TEST_F(PassthroughTest, FlockSeesEachSharedOpenAsItsOwnDescription) {
  write_file(src("f"), "x");
  uint64_t ino = lookup(kRoot, "f");
  uint64_t a = open(ino, O_RDONLY), b = open(ino, O_RDONLY);
  ASSERT_TRUE(is_shared(a) && is_shared(b));
  EXPECT_TRUE(fs_->flock(ctx_, ino, a, LOCK_EX | LOCK_NB).ok());
  EXPECT_EQ(fs_->flock(ctx_, ino, b, LOCK_EX | LOCK_NB).error(), EWOULDBLOCK);
  EXPECT_EQ(fs_->flock(ctx_, ino, b, LOCK_SH | LOCK_NB).error(), EWOULDBLOCK);
  int native = ::open(src("f").c_str(), O_RDONLY);
  EXPECT_EQ(::flock(native, LOCK_SH | LOCK_NB), -1) << "the backing file is locked";
  release(ino, a);  // closing an open drops its flock
  EXPECT_TRUE(fs_->flock(ctx_, ino, b, LOCK_EX | LOCK_NB).ok());
  EXPECT_TRUE(fs_->flock(ctx_, ino, b, LOCK_UN).ok());
  EXPECT_EQ(::flock(native, LOCK_EX | LOCK_NB), 0);
  ::close(native);
  release(ino, b);
}

}  // namespace
}  // namespace efuse::fs::passthrough

namespace efuse::fs::passthrough {
namespace {

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

// A handle the kernel never got is EBADF everywhere, and never reaches another descriptor
// of efused: the passthrough fh carries its descriptor, and RELEASE used to close() whatever
// descriptor a forged fh named.
TEST_F(PassthroughTest, UnknownHandlesAreEbadfAndCloseNothing) {
  ASSERT_TRUE(write_file(src("f"), "abc"));
  uint64_t id = lookup(kRoot, "f");
  int other = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // efused's, not the kernel's
  ASSERT_GE(other, 0);
  uint64_t forged = static_cast<uint64_t>(other);
  char buf[4];
  EXPECT_EQ(fs_->read(ctx_, id, forged, 0, buf).error(), EBADF);
  EXPECT_EQ(fs_->write(ctx_, id, forged, 0, std::span<const char>("x", 1)).error(), EBADF);
  EXPECT_EQ(fs_->fsync(ctx_, id, forged, false).error(), EBADF);
  EXPECT_EQ(fs_->flush(ctx_, id, forged, 0).error(), EBADF);
  EXPECT_EQ(fs_->getattr(ctx_, id, &forged).error(), EBADF);
  EXPECT_EQ(fs_->release(ctx_, id, forged).error(), EBADF);
  EXPECT_TRUE(fd_open(other)) << "a forged RELEASE closed an unrelated descriptor";
  ::close(other);

  // A real handle works until it is released, then is unknown too.
  size_t before = fs_->open_handles();
  uint64_t fh = open(id, O_RDWR);
  EXPECT_EQ(fs_->open_handles(), before + 1);
  auto n = fs_->read(ctx_, id, fh, 0, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 3u);
  release(id, fh);
  EXPECT_EQ(fs_->open_handles(), before);
  EXPECT_EQ(fs_->read(ctx_, id, fh, 0, buf).error(), EBADF);
  EXPECT_EQ(fs_->release(ctx_, id, fh).error(), EBADF) << "a second RELEASE";
}


// ---- files written by processes under libefuse_intercept.so (passthrough_library.cpp) ----

class LibraryWritesTest : public PassthroughTest {
 protected:
  LibraryWritesTest() {
    Policy p;
    p.attr_timeout = 60;
    p.entry_timeout = 60;
    p.passthrough_io = false;  // no passthrough granted here (init below): the page cache
    p.adaptive_io = false;
    fs_->set_policy(p);
    fs_->set_invalidator(&inv_);
  }
  ~LibraryWritesTest() override { fs_->set_invalidator(nullptr); }
  double attr_timeout(uint64_t ino) {
    auto a = fs_->getattr(ctx_, ino, nullptr);
    EXPECT_TRUE(a.ok());
    return a.ok() ? a->timeout : -1;
  }
  RecordingInvalidator inv_;
};

TEST_F(LibraryWritesTest, AMarkedFileIsNotCachedWhileAnyOpenForWritingRemains) {
  ASSERT_TRUE(write_file(src("f"), "abc"));
  uint64_t id = lookup(kRoot, "f");
  EXPECT_EQ(attr_timeout(id), 60);
  int fd = ::open(src("f").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(fs_->library_writing(fd).ok());
  EXPECT_EQ(inv_.pages_dropped(id), 1u) << "attributes and pages dropped at the mark";
  EXPECT_EQ(attr_timeout(id), 0);
  auto e = fs_->lookup(ctx_, kRoot, "f");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->attr_timeout, 0);
  EXPECT_EQ(e->entry_timeout, 60) << "the name is not what changes";
  // The kernel's opens of it are uncached: direct I/O here (no passthrough granted).
  auto o = fs_->open(ctx_, id, O_RDONLY);
  ASSERT_TRUE(o.ok());
  EXPECT_TRUE(o->direct_io);
  release(id, o->fh);
  // A forked child keeps the file open for writing after this process closed it.
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  pid_t child = ::fork();
  if (child == 0) {
    char c;
    (void)!::read(pipefd[0], &c, 1);  // until the test says so
    _exit(0);
  }
  ::close(fd);
  EXPECT_EQ(fs_->library_sweep(), 1u) << "the child's open keeps it";
  EXPECT_EQ(attr_timeout(id), 0);
  (void)!::write(pipefd[1], "x", 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
  EXPECT_EQ(fs_->library_sweep(), 0u);
  EXPECT_EQ(fs_->library_marked(), 0u);
  EXPECT_EQ(attr_timeout(id), 60) << "cached again";
}

TEST_F(LibraryWritesTest, AFileTheKernelLooksUpAfterTheMarkIsMarkedToo) {
  ASSERT_TRUE(write_file(src("later"), "abc"));
  int fd = ::open(src("later").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(fs_->library_writing(fd).ok());
  auto e = fs_->lookup(ctx_, kRoot, "later");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->attr_timeout, 0);
  ::close(fd);
  EXPECT_EQ(fs_->library_sweep(), 0u);
  EXPECT_EQ(attr_timeout(e->ino), 60);
}

TEST_F(LibraryWritesTest, RefusedWhileTheFileIsOpenThroughThePageCache) {
  ASSERT_TRUE(write_file(src("f"), "abc"));
  uint64_t id = lookup(kRoot, "f");
  auto o = fs_->open(ctx_, id, O_RDONLY);
  ASSERT_TRUE(o.ok());
  ASSERT_FALSE(o->direct_io);  // through the page cache
  int fd = ::open(src("f").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(fs_->library_writing(fd).error(), EBUSY);
  EXPECT_EQ(fs_->library_marked(), 0u);
  EXPECT_EQ(attr_timeout(id), 60);
  release(id, o->fh);
  EXPECT_TRUE(fs_->library_writing(fd).ok()) << "once that open is closed";
  ::close(fd);
}

TEST_F(LibraryWritesTest, BadDescriptorsAreRefusedAndChangesInvalidateAttributes) {
  ASSERT_TRUE(write_file(src("f"), "abc"));
  uint64_t id = lookup(kRoot, "f");
  int ro = ::open(src("f").c_str(), O_RDONLY | O_CLOEXEC);
  int dir = ::open(src_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  EXPECT_EQ(fs_->library_writing(ro).error(), EBADF) << "not open for writing";
  EXPECT_EQ(fs_->library_writing(dir).error(), EINVAL);
  EXPECT_EQ(fs_->library_writing(pipefd[1]).error(), EINVAL);
  EXPECT_EQ(fs_->library_writing(-1).error(), EBADF);
  EXPECT_EQ(fs_->library_changed(pipefd[0]).error(), EINVAL);
  EXPECT_EQ(fs_->library_marked(), 0u);
  EXPECT_TRUE(fs_->library_changed(ro).ok());  // (no change made: the watcher stays quiet)
  EXPECT_EQ(inv_.attrs_dropped(id), 1u);
  EXPECT_EQ(inv_.pages_dropped(id), 0u);
  for (int fd : {ro, dir, pipefd[0], pipefd[1]}) ::close(fd);
}

}  // namespace
}  // namespace efuse::fs::passthrough

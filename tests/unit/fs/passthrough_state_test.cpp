// The passthrough backend's restart state: what one PassthroughFs records, another (the
// next efused) restores, and then serves the nodeids and file handles the kernel holds.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>

#include "../testing/temp_dir.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {
namespace {

using efuse::testing::read_file;
using efuse::testing::TempDir;
using efuse::testing::write_file;

class PassthroughStateTest : public ::testing::Test {
 protected:
  PassthroughStateTest() {
    src_ = tmp_ / "src";
    EXPECT_EQ(::mkdir(src_.c_str(), 0755), 0);
    EXPECT_EQ(::mkdir((src_ + "/dir").c_str(), 0755), 0);
    write_file(src_ + "/dir/a.txt", "alpha");
    write_file(src_ + "/dir/b.txt", "bravo");
    old_ = std::make_unique<PassthroughFs>(src_, Policy{});
    old_->init(Capabilities{});
    auto f = SlotFile::create("state-test");
    EXPECT_TRUE(f.ok());
    file_ = std::move(*f);
  }
  // The next efused: the same file, mapped anew, restored into a new backend.
  Status restore(std::string* why) {
    auto f = SlotFile::adopt(UniqueFd(fcntl(file_->fd(), F_DUPFD_CLOEXEC, 3)), why);
    if (!f.ok()) return Errno{f.error()};
    file2_ = std::move(*f);
    new_ = std::make_unique<PassthroughFs>(src_, Policy{});
    new_->init(Capabilities{});
    return new_->restore_state(file2_.get(), why);
  }

  TempDir tmp_;
  std::string src_;
  Context ctx_;
  std::unique_ptr<SlotFile> file_, file2_;
  std::unique_ptr<PassthroughFs> old_, new_;
};

TEST_F(PassthroughStateTest, NodeidsAndOpenHandlesCarryOverToTheNextBackend) {
  if (!old_->record_state(file_.get())) GTEST_SKIP() << "no file handles here";
  auto dir = old_->lookup(ctx_, 1, "dir");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(old_->lookup(ctx_, 1, "dir").ok());  // nlookup 2
  auto a = old_->lookup(ctx_, dir->ino, "a.txt");
  auto b = old_->lookup(ctx_, dir->ino, "b.txt");
  ASSERT_TRUE(a.ok() && b.ok());
  auto wr = old_->open(ctx_, a->ino, O_RDWR);  // a private handle
  auto rd = old_->open(ctx_, b->ino, O_RDONLY);  // a shared one
  ASSERT_TRUE(wr.ok() && rd.ok());
  auto gone = old_->lookup(ctx_, dir->ino, "b.txt");
  ASSERT_TRUE(gone.ok());
  old_->forget(b->ino, 1);  // back to 1 lookup (the open keeps it anyway)

  std::string why;
  ASSERT_TRUE(restore(&why).ok()) << why;
  // Nodeids the kernel holds resolve, handles read and write the same files.
  auto attr = new_->getattr(ctx_, a->ino, nullptr);
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(attr->attr.st_size, 5);
  char buf[16] = {};
  auto n = new_->read(ctx_, b->ino, rd->fh, 0, std::span<char>(buf, sizeof buf));
  ASSERT_TRUE(n.ok()) << strerror(n.error());
  EXPECT_EQ(std::string(buf, *n), "bravo");
  ASSERT_TRUE(new_->write(ctx_, a->ino, wr->fh, 0, std::span<const char>("ALPHA", 5)).ok());
  EXPECT_EQ(read_file(src_ + "/dir/a.txt"), "ALPHA");
  auto again = new_->lookup(ctx_, dir->ino, "a.txt");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ino, a->ino);  // the same object keeps its nodeid
  // A new open never gets the number of a handle the kernel still holds.
  auto fresh = new_->open(ctx_, a->ino, O_RDWR);
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->fh, wr->fh);
  EXPECT_NE(fresh->fh, rd->fh);
  EXPECT_TRUE(new_->release(ctx_, a->ino, wr->fh).ok());
  EXPECT_TRUE(new_->release(ctx_, b->ino, rd->fh).ok());
  EXPECT_TRUE(new_->release(ctx_, a->ino, fresh->fh).ok());
  EXPECT_EQ(new_->release(ctx_, a->ino, wr->fh).error(), EBADF);  // once only
  // Lookup counts carried over: the directory goes only with its second FORGET.
  new_->forget(dir->ino, 1);
  EXPECT_TRUE(new_->getattr(ctx_, dir->ino, nullptr).ok());
  new_->forget(dir->ino, 1);
  EXPECT_EQ(new_->getattr(ctx_, dir->ino, nullptr).error(), ESTALE);
  // A new inode gets a nodeid the previous backend never handed out.
  write_file(src_ + "/dir/c.txt", "charlie");
  auto c = new_->lookup(ctx_, 1, "dir");
  ASSERT_TRUE(c.ok());
  EXPECT_GT(c->ino, b->ino);
}

TEST_F(PassthroughStateTest, AStateWithAnOpenOfAnUnknownNodeIsRefused) {
  if (!old_->record_state(file_.get())) GTEST_SKIP() << "no file handles here";
  SlotFile::Slot* s = file_->alloc();
  ASSERT_NE(s, nullptr);
  s->v[0].store(12345);
  s->v[1].store(999);  // a nodeid nothing recorded
  SlotFile::publish(s, SlotFile::kOpen);
  std::string why;
  EXPECT_FALSE(restore(&why).ok());
  EXPECT_NE(why.find("999"), std::string::npos) << why;
}

}  // namespace
}  // namespace efuse::fs::passthrough

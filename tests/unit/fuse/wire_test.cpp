#include "fuse/wire.h"

#include <gtest/gtest.h>

#include <string>

namespace fuse {
namespace {

TEST(Reader, TakesStructsAndStopsAtTheEnd) {
  kernel::fuse_open_in in{0x8002, 7};
  std::string buf(reinterpret_cast<const char*>(&in), sizeof in);
  Reader r(buf);
  auto got = r.take<kernel::fuse_open_in>();
  ASSERT_TRUE(got);
  EXPECT_EQ(got->flags, 0x8002u);
  EXPECT_EQ(got->open_flags, 7u);
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_FALSE(r.take<uint32_t>());
}

TEST(Reader, TruncatedStructIsRejectedWithoutConsuming) {
  std::string buf(sizeof(kernel::fuse_write_in) - 1, 'x');
  Reader r(buf);
  EXPECT_FALSE(r.take<kernel::fuse_write_in>());
  EXPECT_EQ(r.remaining(), buf.size());
}

TEST(Reader, NamesMustBeTerminatedNonEmptyAndSlashFree) {
  {
    std::string buf("abc", 3);  // no NUL
    Reader r(buf);
    EXPECT_FALSE(r.take_name());
  }
  {
    std::string buf("\0", 1);
    Reader r(buf);
    EXPECT_FALSE(r.take_name());
  }
  {
    std::string buf("a/b\0", 4);
    Reader r(buf);
    EXPECT_FALSE(r.take_name());
  }
  {
    std::string buf("old\0new\0", 8);
    Reader r(buf);
    EXPECT_EQ(*r.take_name(), "old");
    EXPECT_EQ(*r.take_name(), "new");
    EXPECT_FALSE(r.take_name());
  }
}

TEST(Reader, SymlinkTargetsMayContainSlashes) {
  std::string buf("../a/b\0", 7);
  Reader r(buf);
  EXPECT_EQ(*r.take_string(), "../a/b");
}

TEST(Reader, PrefixZeroFillsOlderLayouts) {
  uint32_t compat[2] = {5, 1};  // fuse_setxattr_in before FUSE_SETXATTR_EXT: 8 bytes
  std::string buf(reinterpret_cast<const char*>(compat), sizeof compat);
  Reader r(buf);
  auto in = r.take_prefix<kernel::fuse_setxattr_in>(kernel::kCompatSetxattrInSize);
  ASSERT_TRUE(in);
  EXPECT_EQ(in->size, 5u);
  EXPECT_EQ(in->flags, 1u);
  EXPECT_EQ(in->setxattr_flags, 0u);
}

TEST(Wire, TimeoutsSplitIntoSecondsAndNanoseconds) {
  uint64_t s;
  uint32_t ns;
  split_timeout(1.5, &s, &ns);
  EXPECT_EQ(s, 1u);
  EXPECT_EQ(ns, 500000000u);
  split_timeout(-3, &s, &ns);
  EXPECT_EQ(s, 0u);
  EXPECT_EQ(ns, 0u);
}

TEST(Wire, DirentSizesAreEightByteAligned) {
  EXPECT_EQ(kernel::dirent_size(1), 32u);
  EXPECT_EQ(kernel::dirent_size(8), 32u);
  EXPECT_EQ(kernel::dirent_size(9), 40u);
  EXPECT_EQ(kernel::direntplus_size(1), 160u);
}

}  // namespace
}  // namespace fuse

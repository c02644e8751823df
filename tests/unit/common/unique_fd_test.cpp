#include "common/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <utility>

namespace efuse {
namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0 || errno != EBADF; }

TEST(UniqueFd, ClosesWhatItOwnsOnceAndMovesOwnership) {
  int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    UniqueFd a(raw);
    EXPECT_TRUE(a);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), raw);
    EXPECT_TRUE(is_open(raw));
  }
  EXPECT_FALSE(is_open(raw)) << "closed when its owner went";

  int r2 = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(r2, 0);
  UniqueFd c(r2);
  int kept = c.release();
  EXPECT_FALSE(c);
  c.reset();
  EXPECT_TRUE(is_open(kept)) << "release() gives up ownership";
  c.reset(kept);
  c.reset();
  EXPECT_FALSE(is_open(kept));
}

}  // namespace
}  // namespace efuse

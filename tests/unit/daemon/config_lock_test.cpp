// One efused per config file: the flock in the runtime directory.
#include "daemon/config_lock.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

namespace efuse::daemon {
namespace {

class ConfigLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/efuse-lock-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // Without root the lock lives in $XDG_RUNTIME_DIR/efuse (as root: /run/efuse).
    setenv("XDG_RUNTIME_DIR", dir_.c_str(), 1);
    config_ = dir_ + "/mounts.yaml";
    std::ofstream(config_) << "mounts: []\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_, config_;
};

TEST_F(ConfigLockTest, SecondHolderIsRefusedNamingTheFirstUntilItIsGone) {
  std::string why;
  auto first = std::make_unique<ConfigLock>();
  ASSERT_EQ(first->acquire(config_, &why), ConfigLock::Outcome::Held) << why;
  const std::string path = ConfigLock::lock_path(config_);
  EXPECT_TRUE(std::filesystem::exists(path)) << path;

  // The same file by another name: the real path decides.
  ConfigLock second;
  EXPECT_EQ(second.acquire(dir_ + "/./mounts.yaml", &why), ConfigLock::Outcome::InUse);
  EXPECT_NE(why.find("config file " + config_ + " is already served by pid " +
                     std::to_string(getpid()) + " ("),
            std::string::npos)
      << why;

  first.reset();  // unlinks the file, then releases the lock
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_EQ(second.acquire(config_, &why), ConfigLock::Outcome::Held) << why;
}

TEST_F(ConfigLockTest, OtherConfigFilesAreIndependent) {
  std::string other = dir_ + "/other.yaml";
  std::ofstream(other) << "mounts: []\n";
  std::string why;
  ConfigLock a, b;
  EXPECT_EQ(a.acquire(config_, &why), ConfigLock::Outcome::Held) << why;
  EXPECT_EQ(b.acquire(other, &why), ConfigLock::Outcome::Held) << why;
  EXPECT_NE(ConfigLock::lock_path(config_), ConfigLock::lock_path(other));
}

}  // namespace
}  // namespace efuse::daemon

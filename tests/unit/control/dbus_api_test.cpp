#include "control/dbus_api.h"

#include <cerrno>

#include <gtest/gtest.h>

#include "control/dbus_errors.h"

namespace efuse::control {
namespace {

TEST(MountName, AcceptsWhatTheConfigAccepts) {
  for (const char* name : {"a", "data", "Mount_1", "x.y-z", "0"}) {
    EXPECT_TRUE(valid_mount_name(name)) << name;
  }
  EXPECT_TRUE(valid_mount_name(std::string(kMaxMountNameLength, 'n')));
}

TEST(MountName, RejectsEverythingElse) {
  for (const char* name : {"", "a/b", "a b", "a\tb", "caf\xC3\xA9", "a:b", "*", "a\\b"}) {
    EXPECT_FALSE(valid_mount_name(name)) << name;
  }
  EXPECT_FALSE(valid_mount_name(std::string(kMaxMountNameLength + 1, 'n')));
  EXPECT_FALSE(valid_mount_name(std::string("a\0b", 3)));
}

TEST(SanitizeUtf8, KeepsValidText) {
  for (const char* text : {"", "plain", "caf\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                           "\xEF\xBF\xBD"}) {
    EXPECT_EQ(sanitize_utf8(text), text);
  }
}

TEST(SanitizeUtf8, ReplacesInvalidBytes) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(sanitize_utf8("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(sanitize_utf8("\xC3"), r);                        // truncated sequence
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), r + r);                // overlong '/'
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), r + r + r);        // surrogate
  EXPECT_EQ(sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(sanitize_utf8(std::string("a\0b", 3)), "a?b");
}

TEST(ManagerErrors, MapErrnoToNames) {
  EXPECT_EQ(map_manager_error(Operation::GetMount, ENOENT, "x", "").name, kErrorNoSuchMount);
  EXPECT_EQ(map_manager_error(Operation::Mount, ENOENT, "x", "").name, kErrorNoSuchMount);
  EXPECT_EQ(map_manager_error(Operation::Mount, EALREADY, "x", "").name, kErrorAlreadyMounted);
  EXPECT_EQ(map_manager_error(Operation::Unmount, ENOTCONN, "x", "").name, kErrorNotMounted);
  EXPECT_EQ(map_manager_error(Operation::Unmount, EALREADY, "x", "").name, kErrorNotMounted);
  EXPECT_EQ(map_manager_error(Operation::Mount, ENOTCONN, "x", "").name, kErrorFailed);
  EXPECT_EQ(map_manager_error(Operation::Reload, EINVAL, "", "f:1:2: m").name,
            kErrorInvalidConfig);
  EXPECT_EQ(map_manager_error(Operation::Reload, EIO, "", "").name, kErrorFailed);
}

TEST(ManagerErrors, MessagesCarryTheDetail) {
  EXPECT_EQ(map_manager_error(Operation::Reload, EINVAL, "", "f.yaml:1:2: bad").message,
            "f.yaml:1:2: bad");
  EXPECT_EQ(map_manager_error(Operation::Mount, EIO, "m", "no such dir").message,
            "mount 'm': no such dir");
  EXPECT_EQ(map_manager_error(Operation::Unmount, EBUSY, "m", "").message,
            "unmount 'm': Device or resource busy");
  EXPECT_EQ(map_manager_error(Operation::Mount, ENOENT, "m", "").message, "no mount named 'm'");
}

}  // namespace
}  // namespace efuse::control

// bpf/mountinfo: FUSE mounts from /proc/self/mountinfo, keyed like the BPF programs key
// connections (kernel dev_t encoding).
#include "bpf/mountinfo.h"

#include <gtest/gtest.h>

namespace efuse::bpf {
namespace {

constexpr const char* kMountinfo =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "42 22 0:39 / /tmp/a\\040b/mnt rw,nosuid,nodev,relatime shared:7 - fuse.efuse /src "
    "rw,user_id=0,group_id=0\n"
    "43 22 0:51 / /mnt/ll rw,nosuid - fuse.passthrough_ll passthrough_ll rw,user_id=0\n"
    "44 22 0:51 /sub /mnt/bind rw - fuse.passthrough_ll passthrough_ll rw\n"
    "45 22 0:60 /sub /mnt/first-bind rw - fuse sshfs rw\n"
    "46 22 0:60 / /mnt/root-later rw - fuse sshfs rw\n"
    "47 22 8:17 / /media/ntfs rw - fuseblk /dev/sdb1 rw\n"
    "48 22 0:25 / /sys/fs/fuse/connections rw - fusectl fusectl rw\n"
    "garbage line without separator\n"
    "49 22 bad / /x rw - fuse.x x rw\n";

TEST(Mountinfo, KeepsFuseMountsKeyedByKernelDevNumber) {
  auto mounts = parse_fuse_mounts(kMountinfo);
  ASSERT_EQ(mounts.size(), 4u);
  ASSERT_TRUE(mounts.count(connection_id(0, 39)));
  EXPECT_EQ(mounts[connection_id(0, 39)].mountpoint, "/tmp/a b/mnt");  // \040 unescaped
  EXPECT_EQ(mounts[connection_id(0, 39)].fstype, "fuse.efuse");
  EXPECT_EQ(mounts[connection_id(0, 51)].fstype, "fuse.passthrough_ll");
  EXPECT_EQ(mounts[connection_id(8, 17)].fstype, "fuseblk");
  EXPECT_EQ(connection_id(0, 39), 39u);  // == /sys/fs/fuse/connections/39
  EXPECT_EQ(connection_id(8, 17), (8u << 20) | 17u);
  EXPECT_EQ(mounts.count(connection_id(0, 25)), 0u);  // fusectl is not FUSE
}

TEST(Mountinfo, BindMountsPreferTheRootMountThenTheFirst) {
  auto mounts = parse_fuse_mounts(kMountinfo);
  EXPECT_EQ(mounts[connection_id(0, 51)].mountpoint, "/mnt/ll");
  EXPECT_EQ(mounts[connection_id(0, 60)].mountpoint, "/mnt/root-later");
}

TEST(Mountinfo, ConnectionNames) {
  EXPECT_EQ(connection_name(connection_id(0, 39)), "0:39");
  EXPECT_EQ(connection_name(connection_id(8, 17)), "8:17");
}

TEST(Mountinfo, ReadsThisProcess) {
  // Whatever is mounted here: every entry must be a FUSE type with an absolute path.
  for (const auto& [conn, m] : read_fuse_mounts()) {
    EXPECT_EQ(m.mountpoint.front(), '/');
    EXPECT_EQ(m.fstype.rfind("fuse", 0), 0u) << m.fstype;
  }
}

}  // namespace
}  // namespace efuse::bpf

#include "control/mount_table.h"

#include <gtest/gtest.h>

namespace efuse::control {
namespace {

using nlohmann::json;

TEST(MountTable, AlignsColumns) {
  const json mounts = json::array(
      {{{"name", "a"}, {"state", "mounted"}, {"mountpoint", "/mnt/a"}, {"transport", "uring"},
        {"tier", "module"}, {"error", ""}},
       {{"name", "longer"}, {"state", "failed"}, {"mountpoint", "/m"}, {"transport", ""},
        {"tier", ""}, {"error", "mountpoint /m: No such file or directory"}}});
  EXPECT_EQ(format_mount_table(mounts),
            "NAME    STATE    MOUNTPOINT  TRANSPORT  TIER    ERROR\n"
            "a       mounted  /mnt/a      uring      module  -\n"
            "longer  failed   /m          -          -       mountpoint /m: No such file or "
            "directory\n");
}

TEST(MountTable, ToleratesMissingAndOddFields) {
  const json mounts = json::array({{{"name", "a"}, {"state", 3}, {"error", "two\nlines"}},
                                   "not an object"});
  EXPECT_EQ(format_mount_table(mounts),
            "NAME  STATE  MOUNTPOINT  TRANSPORT  TIER  ERROR\n"
            "a     3      -           -          -     two lines\n"
            "-     -      -           -          -     -\n");
}

TEST(MountTable, EmptyAndWrongShapes) {
  EXPECT_EQ(format_mount_table(json::array()), "(no mounts configured)\n");
  EXPECT_EQ(format_mount_table(json::object()), "(unexpected reply: not a list of mounts)\n");
}

TEST(MountTable, Status) {
  const json mounts = json::array({{{"name", "a"}, {"state", "mounted"}},
                                   {{"name", "b"}, {"state", "failed"}}});
  const std::string s = format_status("1.2.3", 2, mounts);
  EXPECT_EQ(s.substr(0, s.find('\n')), "efused 1.2.3, 2 mounts (1 mounted)");
  EXPECT_NE(s.find("\nNAME "), std::string::npos);
  EXPECT_EQ(format_status("1", 1, json::array()).substr(0, 20), "efused 1, 1 mount (0");
}

TEST(MountTable, StatusSaysWhichTelemetryLevelRuns) {
  const json running = {{"configured", "requests"}, {"level", "requests"}, {"up", true},
                        {"reason", ""}, {"off", ""}};
  std::string s = format_status("1", 1, json::array(), json::object(), running);
  EXPECT_NE(s.find("\ntelemetry: requests\n"), std::string::npos) << s;
  EXPECT_EQ(format_telemetry({{"configured", "off"}, {"level", "off"}, {"off", "disabled"}}),
            "telemetry: off\n");
  EXPECT_EQ(format_telemetry({{"configured", "full"},
                              {"level", "off"},
                              {"off", "unsupported"},
                              {"reason", "kernel has no fuse_request_send tracepoint"}}),
            "telemetry: off (configured full; unsupported: kernel has no fuse_request_send "
            "tracepoint)\n");
  // With the sampling rate (efused since telemetry_sample_every); not while off.
  EXPECT_EQ(format_telemetry({{"configured", "full"}, {"level", "full"}, {"up", true},
                              {"off", ""}, {"sample_every", 8}}),
            "telemetry: full, timed 1 in 8 of the time\n");
  EXPECT_EQ(format_telemetry({{"configured", "requests"}, {"level", "requests"}, {"up", true},
                              {"off", ""}, {"sample_every", 1}}),
            "telemetry: requests, every request timed\n");
  EXPECT_EQ(format_telemetry({{"configured", "off"}, {"level", "off"}, {"off", "disabled"},
                              {"sample_every", 8}}),
            "telemetry: off\n");
  // An efused without the property: no telemetry line.
  EXPECT_EQ(format_status("1", 1, json::array()).find("telemetry"), std::string::npos);
}

TEST(MountTable, DetailsFlattenNestedObjects) {
  const json mount = {{"name", "a"}, {"kernel", {{"protocol", "7.45"}, {"passthrough", true}}},
                      {"requests", 12}};
  EXPECT_EQ(format_mount_details(mount),
            "kernel.passthrough: true\nkernel.protocol: 7.45\nname: a\nrequests: 12\n");
}

}  // namespace
}  // namespace efuse::control

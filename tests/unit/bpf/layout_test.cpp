// The compiled BPF object agrees with bpf/efuse_telemetry.h, and the loader would refuse
// an object that does not. Opening a skeleton parses the embedded ELF only: no privileges.
#include "bpf/layout.h"

#include <gtest/gtest.h>

#include <vector>

#include "bpf/skeleton.h"
#include "efuse_telemetry.skel.h"

namespace efuse::bpf {
namespace {

TEST(BpfLayout, CompiledObjectMatchesTheSharedHeader) {
  TelemetrySkeleton skel = TelemetrySkeleton::open();
  ASSERT_TRUE(skel);
  std::string error;
  EXPECT_TRUE(check_layout(skel.object(), kTelemetryMaps, &error)) << error;
}

TEST(BpfLayout, RefusesAValueSizeThatDisagrees) {
  TelemetrySkeleton skel = TelemetrySkeleton::open();
  ASSERT_TRUE(skel);
  std::vector<MapLayout> wrong(kTelemetryMaps.begin(), kTelemetryMaps.end());
  wrong[1].value_size += 8;  // stats grew a counter on one side only
  std::string error;
  EXPECT_FALSE(check_layout(skel.object(), wrong, &error));
  EXPECT_NE(error.find("'stats'"), std::string::npos) << error;
  EXPECT_NE(error.find("different headers"), std::string::npos) << error;
}

TEST(BpfLayout, RefusesAMissingMap) {
  TelemetrySkeleton skel = TelemetrySkeleton::open();
  ASSERT_TRUE(skel);
  const MapLayout missing[] = {{"no_such_map", 4, 8}};
  std::string error;
  EXPECT_FALSE(check_layout(skel.object(), missing, &error));
  EXPECT_NE(error.find("no_such_map"), std::string::npos) << error;
}

TEST(BpfLayout, SkeletonIsMoveOnlyAndOwnsOneObject) {
  static_assert(!std::is_copy_constructible_v<TelemetrySkeleton>);
  static_assert(std::is_nothrow_move_constructible_v<TelemetrySkeleton>);
  TelemetrySkeleton a = TelemetrySkeleton::open();
  ASSERT_TRUE(a);
  efuse_telemetry_bpf* raw = a.get();
  TelemetrySkeleton b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  EXPECT_EQ(b.get(), raw);
  b = TelemetrySkeleton();
  EXPECT_FALSE(b);
}

TEST(BpfLayout, ProgramsAreTheTwoFuseTracepoints) {
  TelemetrySkeleton skel = TelemetrySkeleton::open();
  ASSERT_TRUE(skel);
  EXPECT_STREQ(bpf_program__section_name(skel->progs.efuse_request_send),
               "tp_btf/fuse_request_send");
  EXPECT_STREQ(bpf_program__section_name(skel->progs.efuse_request_end),
               "tp_btf/fuse_request_end");
  size_t programs = 0;
  bpf_program* p = nullptr;
  bpf_object__for_each_program(p, skel.object()) ++programs;
  EXPECT_EQ(programs, 2u);  // nothing on sched_switch
}

}  // namespace
}  // namespace efuse::bpf

// The one opcode table (fuse/opcode_list.h): names, numbers and dispatch agree.
#include "fuse/opcodes.h"

#include <gtest/gtest.h>

#include <cctype>
#include <set>
#include <string>

#include "fuse/kernel.h"
#include "session_harness.h"

namespace fuse::testing {
namespace {

using Op = k::Opcode;

TEST(OpcodeTable, NamesAreDistinctLabelsAndStable) {
  std::set<std::string> names;
  for (uint32_t op = 0; op <= k::kMaxOpcode; ++op) {
    std::string name = opcode_name(op);
    if (name == "unknown") {
      EXPECT_FALSE(opcode_served(op)) << op;
      continue;
    }
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    for (char c : name) EXPECT_TRUE(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_') << name;
  }
  EXPECT_EQ(names.size(), 51u) << "opcodes 1-53 without 7 and 19";
  // Metric labels are an interface: these must not move.
  EXPECT_STREQ(opcode_name(code(Op::Lookup)), "lookup");
  EXPECT_STREQ(opcode_name(1), "lookup");
  EXPECT_STREQ(opcode_name(42), "batch_forget");
  EXPECT_STREQ(opcode_name(47), "copy_file_range");
  EXPECT_STREQ(opcode_name(53), "copy_file_range_64");
  EXPECT_STREQ(opcode_name(k::kMaxOpcode + 1), "unknown");
  EXPECT_STREQ(opcode_name(4096), "unknown");
  EXPECT_EQ(k::kMaxOpcode, 53u);
}

// opcode_served() is what the session dispatches: everything else is answered ENOSYS, every
// served opcode reaches its handler (an empty body is malformed there: never ENOSYS).
TEST(OpcodeTable, ServedIsExactlyWhatTheSessionDispatches) {
  SessionHarness h;
  ASSERT_EQ(h.init().error(), 0);
  int served = 0;
  for (uint32_t op = 0; op <= k::kMaxOpcode; ++op) {
    SCOPED_TRACE(std::string(opcode_name(op)) + " (" + std::to_string(op) + ")");
    if (op == code(Op::Forget) || op == code(Op::BatchForget) || op == code(Op::Interrupt) ||
        op == code(Op::Destroy)) {
      EXPECT_TRUE(opcode_served(op));
      ++served;
      continue;
    }
    Reply r = h.call(op, k::kRootId, "");
    if (opcode_served(op)) {
      ++served;
      EXPECT_NE(r.error(), ENOSYS);
    } else {
      EXPECT_EQ(r.error(), ENOSYS);
    }
  }
  EXPECT_EQ(served, 41);
}

}  // namespace
}  // namespace fuse::testing

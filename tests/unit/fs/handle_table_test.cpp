// The file-handle table (fs/handle_table.h): exactly the handles added and not yet removed
// are there, through growth, removals, reuse of removed slots and threads.
#include "fs/handle_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <set>
#include <thread>
#include <vector>

namespace efuse::fs {
namespace {

TEST(HandleTable, AddContainsRemove) {
  HandleTable t;
  EXPECT_FALSE(t.contains(3));
  EXPECT_FALSE(t.remove(3));
  EXPECT_TRUE(t.add(3));
  EXPECT_FALSE(t.add(3)) << "a handle is there once";
  EXPECT_TRUE(t.contains(3));
  EXPECT_FALSE(t.contains(4));
  EXPECT_EQ(t.size(), 1u);
  EXPECT_TRUE(t.remove(3));
  EXPECT_FALSE(t.remove(3)) << "a second RELEASE of a handle finds nothing";
  EXPECT_FALSE(t.contains(3));
  EXPECT_EQ(t.size(), 0u);
}

TEST(HandleTable, ZeroAndHighBitHandlesAreOrdinary) {
  HandleTable t;
  const uint64_t shared = 1ULL << 63 | 7ULL << 32 | 5;  // passthrough's shared-handle layout
  EXPECT_TRUE(t.add(0));
  EXPECT_TRUE(t.add(shared));
  EXPECT_TRUE(t.contains(0));
  EXPECT_TRUE(t.contains(shared));
  EXPECT_FALSE(t.contains(5)) << "the descriptor alone is not the handle";
}

TEST(HandleTable, MarkerValuesAreNeverHandles) {
  HandleTable t;
  EXPECT_FALSE(t.add(HandleTable::kEmpty));
  EXPECT_FALSE(t.add(HandleTable::kRemoved));
  EXPECT_FALSE(t.contains(HandleTable::kEmpty));
  EXPECT_FALSE(t.contains(HandleTable::kRemoved));
  EXPECT_FALSE(t.remove(HandleTable::kRemoved));
  EXPECT_EQ(t.size(), 0u);
}

// Random adds and removes against std::set: growth, removed slots reused, probe paths that
// run across removed slots.
TEST(HandleTable, MatchesASetUnderRandomChurn) {
  HandleTable t;
  std::set<uint64_t> want;
  std::mt19937_64 rng(18);
  for (int i = 0; i < 200000; ++i) {
    // Few distinct values (descriptors are reused) and some spread ones (serials).
    uint64_t fh = (rng() % 4 == 0) ? rng() : rng() % 512;
    if (fh >= HandleTable::kRemoved) continue;
    if (rng() % 3 == 0) {
      EXPECT_EQ(t.remove(fh), want.erase(fh) == 1) << fh;
    } else {
      EXPECT_EQ(t.add(fh), want.insert(fh).second) << fh;
    }
    if (i % 10000 == 0) {
      ASSERT_EQ(t.size(), want.size());
    }
  }
  EXPECT_EQ(t.size(), want.size());
  for (uint64_t fh : want) EXPECT_TRUE(t.contains(fh)) << fh;
  for (uint64_t fh = 0; fh < 512; ++fh) EXPECT_EQ(t.contains(fh), want.count(fh) == 1) << fh;
}

// Many handles live at once, then all removed: nothing is lost in growth.
TEST(HandleTable, GrowsWithoutLosingHandles) {
  HandleTable t;
  for (uint64_t fh = 0; fh < 100000; ++fh) ASSERT_TRUE(t.add(fh * 4096 + 3));
  EXPECT_EQ(t.size(), 100000u);
  for (uint64_t fh = 0; fh < 100000; ++fh) ASSERT_TRUE(t.contains(fh * 4096 + 3));
  EXPECT_FALSE(t.contains(4096 + 4));
  for (uint64_t fh = 0; fh < 100000; ++fh) ASSERT_TRUE(t.remove(fh * 4096 + 3));
  EXPECT_EQ(t.size(), 0u);
}

// Opens on one thread and releases on another, as on two queues: every handle is removed
// exactly once and the table ends empty.
TEST(HandleTable, AddOnOneThreadRemoveOnAnother) {
  HandleTable t;
  constexpr uint64_t kN = 50000;
  std::atomic<uint64_t> added{0};
  std::thread opener([&] {
    for (uint64_t i = 0; i < kN; ++i) {
      ASSERT_TRUE(t.add(1ULL << 63 | i << 32 | 9));
      added.store(i + 1, std::memory_order_release);
    }
  });
  uint64_t removed = 0;
  std::thread releaser([&] {
    while (removed < kN) {
      if (removed < added.load(std::memory_order_acquire)) {
        ASSERT_TRUE(t.remove(1ULL << 63 | removed << 32 | 9));
        ++removed;
      }
    }
  });
  opener.join();
  releaser.join();
  EXPECT_EQ(removed, kN);
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace efuse::fs

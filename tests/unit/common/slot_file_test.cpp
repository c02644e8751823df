// SlotFile: the restart state's record file (common/slot_file.h).
#include "common/slot_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <set>

namespace efuse {
namespace {

UniqueFd dup_of(int fd) { return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3)); }

TEST(SlotFile, PublishedSlotsSurviveInAnotherMappingOfTheFile) {
  auto f = SlotFile::create("slot-test");
  ASSERT_TRUE(f.ok());
  std::vector<SlotFile::Slot*> slots;
  for (uint64_t i = 0; i < 10000; ++i) {  // more than one growth step
    SlotFile::Slot* s = (*f)->alloc();
    ASSERT_NE(s, nullptr);
    s->v[0].store(i);
    SlotFile::publish(s, i % 2 ? SlotFile::kNode : SlotFile::kOpen);
    slots.push_back(s);
  }
  (*f)->free(slots[3]);  // a node
  SlotFile::Slot* unpublished = (*f)->alloc();
  ASSERT_NE(unpublished, nullptr);
  unpublished->v[0].store(99999);  // allocated, never published: not a record
  std::memcpy((*f)->meta(), "meta", 4);

  std::string why;
  auto g = SlotFile::adopt(dup_of((*f)->fd()), &why);
  ASSERT_TRUE(g.ok()) << why;
  std::set<uint64_t> nodes, opens;
  (*g)->for_each(SlotFile::kNode, [&](SlotFile::Slot& s) { nodes.insert(s.v[0].load()); });
  (*g)->for_each(SlotFile::kOpen, [&](SlotFile::Slot& s) { opens.insert(s.v[0].load()); });
  EXPECT_EQ(nodes.size(), 4999u);
  EXPECT_EQ(nodes.count(3), 0u);
  EXPECT_EQ(opens.size(), 5000u);
  EXPECT_EQ(opens.count(99999), 0u);
  EXPECT_EQ(std::memcmp((*g)->meta(), "meta", 4), 0);
  // The adopted file reuses free slots before growing.
  SlotFile::Slot* again = (*g)->alloc();
  ASSERT_NE(again, nullptr);
  again->v[0].store(7);
  SlotFile::publish(again, SlotFile::kNode);
  size_t n = 0;
  (*f)->for_each(SlotFile::kNode, [&](SlotFile::Slot&) { ++n; });
  EXPECT_EQ(n, 5000u);  // seen through the first mapping too: one file
  EXPECT_FALSE((*g)->incomplete());
}

TEST(SlotFile, AdoptRefusesWhatIsNotAStateFile) {
  std::string why;
  // An empty memfd.
  UniqueFd empty(memfd_create("not-state", MFD_CLOEXEC));
  EXPECT_FALSE(SlotFile::adopt(std::move(empty), &why).ok());
  EXPECT_NE(why.find("not a state file"), std::string::npos) << why;
  // The right size, the wrong magic.
  auto f = SlotFile::create("slot-test");
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(pwrite((*f)->fd(), "garbage!", 8, 0), 8);
  why.clear();
  EXPECT_FALSE(SlotFile::adopt(dup_of((*f)->fd()), &why).ok());
  EXPECT_NE(why.find("magic"), std::string::npos) << why;
  // Truncated below what its header says is in use.
  auto h = SlotFile::create("slot-test");
  ASSERT_TRUE(h.ok());
  for (int i = 0; i < 5000; ++i) SlotFile::publish((*h)->alloc(), SlotFile::kNode);
  ASSERT_EQ(ftruncate((*h)->fd(), SlotFile::kHeaderSize + 10 * SlotFile::kSlotSize), 0);
  why.clear();
  EXPECT_FALSE(SlotFile::adopt(dup_of((*h)->fd()), &why).ok());
  EXPECT_NE(why.find("truncated"), std::string::npos) << why;
}

TEST(SlotFile, MarkedIncompleteStaysIncomplete) {
  auto f = SlotFile::create("slot-test");
  ASSERT_TRUE(f.ok());
  (*f)->mark_incomplete();
  std::string why;
  auto g = SlotFile::adopt(dup_of((*f)->fd()), &why);
  ASSERT_TRUE(g.ok()) << why;
  EXPECT_TRUE((*g)->incomplete());
}

}  // namespace
}  // namespace efuse

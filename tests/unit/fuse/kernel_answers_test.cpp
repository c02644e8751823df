// fuse::KernelAnswers: what goes into the kernel module tier's handler maps and what every
// change drops (fuse/kernel_answers.h). The store is an in-memory table standing in for the
// BPF maps (the guest tests, tests/vm/guest_kmod.py, run the real ones).
#include "fuse/kernel_answers.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <string>

#include "answer_table.h"
#include "fuse/kernel.h"

namespace fuse {
namespace {

namespace k = kernel;


std::pair<uint64_t, std::string> name(uint64_t parent, const char* n) { return {parent, n}; }

std::span<const char> bytes(const auto& v) {
  return {reinterpret_cast<const char*>(&v), sizeof v};
}

k::fuse_attr_out attr_out(uint64_t ino, uint64_t size) {
  k::fuse_attr_out o{};
  o.attr_valid = 60;
  o.attr.ino = ino;
  o.attr.size = size;
  o.attr.mode = 0100644;
  return o;
}

k::fuse_entry_out entry_out(uint64_t nodeid) {
  k::fuse_entry_out e{};
  e.nodeid = nodeid;
  e.entry_valid = 1;
  return e;
}

class KernelAnswersTest : public ::testing::Test {
 protected:
  void absent(uint64_t parent, const std::string& n, uint64_t since) {
    answers.store_lookup(parent, n, 0, bytes(entry_out(0)), since);
  }
  void stat_reply(uint64_t nodeid, uint64_t size = 5) {
    uint64_t since = answers.begin();
    answers.store_attr(nodeid, bytes(attr_out(nodeid, size)), since);
  }
  AnswerTable store;
  KernelAnswers answers{store};
};

TEST_F(KernelAnswersTest, StoresTheExactReply) {
  stat_reply(7, 1234);
  ASSERT_TRUE(store.attrs.contains(7));
  const efuse_handler_answer& a = store.attrs[7].answer;
  EXPECT_EQ(a.nodeid, 7u);
  EXPECT_EQ(a.error, 0);
  ASSERT_EQ(a.size, sizeof(k::fuse_attr_out));
  k::fuse_attr_out want = attr_out(7, 1234);
  EXPECT_EQ(std::memcmp(a.data, &want, sizeof want), 0);
  EXPECT_EQ(answers.stats().attr_entries, 1u);
  // Used for as long as the reply's attr_valid (60 s) from now, as the kernel's cache.
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + now.tv_nsec;
  EXPECT_GT(store.attrs[7].expires, now_ns + 59ULL * 1000000000ULL);
  EXPECT_LE(store.attrs[7].expires, now_ns + 60ULL * 1000000000ULL);
}

TEST_F(KernelAnswersTest, RepliesValidForNoTimeAreNotStored) {
  k::fuse_attr_out zero = attr_out(7, 1);
  zero.attr_valid = 0;
  answers.store_attr(7, bytes(zero), answers.begin());
  uint64_t since = answers.begin();
  answers.store_lookup(1, "gone", ENOENT, {}, since);  // negative_timeout 0: an error reply
  k::fuse_entry_out neg0 = entry_out(0);
  neg0.entry_valid = 0;
  answers.store_lookup(1, "neg0", 0, bytes(neg0), since);
  EXPECT_TRUE(store.attrs.empty());
  EXPECT_TRUE(store.names.empty());
}

TEST_F(KernelAnswersTest, NegativeLookupsStoredPositiveOnesIndexed) {
  uint64_t since = answers.begin();
  answers.store_lookup(1, "neg", 0, bytes(entry_out(0)), since);
  answers.store_lookup(1, "there", 0, bytes(entry_out(9)), since);
  answers.store_lookup(1, "eio", EIO, {}, since);
  EXPECT_TRUE(store.has_name(1, "neg"));
  EXPECT_EQ(store.names[name(1, "neg")].answer.error, 0);
  EXPECT_EQ(store.names[name(1, "neg")].answer.nodeid, 1u) << "answers for the parent";
  EXPECT_EQ(store.names[name(1, "neg")].answer.size, sizeof(k::fuse_entry_out));
  EXPECT_FALSE(store.has_name(1, "there"));
  EXPECT_FALSE(store.has_name(1, "eio"));
  // The index: removing "there" drops the attributes of node 9.
  stat_reply(9);
  answers.name_removed(1, "there", true);
  EXPECT_FALSE(store.attrs.contains(9));
}

TEST_F(KernelAnswersTest, AChangeDuringTheAnswerKeepsItOut) {
  uint64_t since = answers.begin();
  answers.attr_changed(7);  // a WRITE finished while the GETATTR read the old attributes
  answers.store_attr(7, bytes(attr_out(7, 1)), since);
  EXPECT_FALSE(store.attrs.contains(7));
  EXPECT_EQ(answers.stats().stores_skipped, 1u);
  since = answers.begin();
  answers.name_created(1, "x");
  absent(1, "x", since);
  EXPECT_FALSE(store.has_name(1, "x"));
  stat_reply(7);  // begun after the change: stored
  EXPECT_TRUE(store.attrs.contains(7));
}

TEST_F(KernelAnswersTest, NothingStoredWhileOpenForWriting) {
  stat_reply(7);
  answers.write_opened(7);
  EXPECT_FALSE(store.attrs.contains(7));
  answers.write_opened(7);
  answers.write_released(7);
  stat_reply(7);
  EXPECT_FALSE(store.attrs.contains(7)) << "one writer is still open";
  answers.write_released(7);
  stat_reply(7);
  EXPECT_TRUE(store.attrs.contains(7));
}

TEST_F(KernelAnswersTest, NameChangesDropParentChildAndAbsence) {
  answers.entry_sent(1, "f", 5);
  stat_reply(1);
  stat_reply(5);
  uint64_t since = answers.begin();
  absent(1, "new", since);
  answers.name_created(1, "new");
  EXPECT_FALSE(store.has_name(1, "new"));
  EXPECT_FALSE(store.attrs.contains(1)) << "the directory's mtime changed";
  stat_reply(1);
  answers.name_removed(1, "f", true);
  EXPECT_FALSE(store.attrs.contains(1));
  EXPECT_FALSE(store.attrs.contains(5)) << "the unlinked node's nlink changed";
}

TEST_F(KernelAnswersTest, RenameMovesTheIndexAndDropsTheReplacedNode) {
  answers.entry_sent(1, "a", 5);
  answers.entry_sent(2, "b", 6);
  for (uint64_t n : {1, 2, 5, 6}) stat_reply(n);
  answers.name_moved(1, "a", 2, "b", false, true);
  EXPECT_TRUE(store.attrs.empty());
  stat_reply(5);
  answers.name_removed(2, "b", true);  // "b" now names node 5
  EXPECT_FALSE(store.attrs.contains(5));
  // A failed rename drops entries but leaves the index as it was.
  answers.entry_sent(1, "c", 7);
  answers.name_moved(1, "c", 1, "d", false, false);
  stat_reply(7);
  answers.name_removed(1, "c", true);
  EXPECT_FALSE(store.attrs.contains(7));
}

TEST_F(KernelAnswersTest, ExchangeSwapsTheIndex) {
  answers.entry_sent(1, "a", 5);
  answers.entry_sent(1, "b", 6);
  answers.name_moved(1, "a", 1, "b", true, true);
  stat_reply(5);
  stat_reply(6);
  answers.name_removed(1, "a", true);  // "a" names node 6 now
  EXPECT_FALSE(store.attrs.contains(6));
  EXPECT_TRUE(store.attrs.contains(5));
}

TEST_F(KernelAnswersTest, OutsideChangeAndForgetDropEverythingTheyTouch) {
  answers.entry_sent(1, "f", 5);
  stat_reply(5);
  uint64_t since = answers.begin();
  absent(1, "g", since);
  answers.name_changed_outside(1, "f");
  answers.name_changed_outside(1, "g");
  EXPECT_FALSE(store.attrs.contains(5));
  EXPECT_FALSE(store.has_name(1, "g"));
  since = answers.begin();
  absent(3, "x", since);
  absent(3, "y", since);
  absent(4, "x", since);
  stat_reply(3);
  answers.forgotten(3);
  EXPECT_FALSE(store.attrs.contains(3));
  EXPECT_FALSE(store.has_name(3, "x"));
  EXPECT_FALSE(store.has_name(3, "y"));
  EXPECT_TRUE(store.has_name(4, "x"));
  EXPECT_EQ(answers.stats().name_entries, 1u);
}

TEST_F(KernelAnswersTest, DropAllEmptiesBothMapsAndKeepsRacingAnswersOut) {
  stat_reply(7);
  uint64_t since = answers.begin();
  absent(1, "gone", since);
  answers.drop_all();
  EXPECT_TRUE(store.attrs.empty());
  EXPECT_TRUE(store.names.empty());
  EXPECT_EQ(answers.stats().drops, 2u);
  answers.store_attr(8, bytes(attr_out(8, 1)), since);  // read under the old policy
  EXPECT_FALSE(store.attrs.contains(8));
  stat_reply(8);
  EXPECT_TRUE(store.attrs.contains(8));
}

TEST_F(KernelAnswersTest, AFullMapOnlyCostsTheAnswer) {
  store.full = true;
  stat_reply(7);
  EXPECT_EQ(answers.stats().attr_entries, 0u);
  EXPECT_EQ(answers.stats().stores_skipped, 1u);
  answers.attr_changed(7);  // nothing to drop: no delete reaches the map
  EXPECT_EQ(answers.stats().drops, 0u);
}

TEST_F(KernelAnswersTest, NamesTheModuleCannotAskAboutAreNotStored) {
  uint64_t since = answers.begin();
  absent(1, std::string(EFUSE_HANDLER_NAME_MAX, 'n'), since);
  EXPECT_TRUE(store.names.empty());
}

}  // namespace
}  // namespace fuse

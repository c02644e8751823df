// fuse::KernelAnswers: what goes into the kernel module tier's handler maps and what every
// change drops (fuse/kernel_answers.h). The store is an in-memory table standing in for the
// BPF maps (the guest tests, tests/vm/guest_kmod.py, run the real ones).
#include "fuse/kernel_answers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

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

// A positive entry as efused sends it: valid for a minute, with the node's attributes.
k::fuse_entry_out positive(uint64_t nodeid) {
  k::fuse_entry_out e{};
  e.nodeid = nodeid;
  e.entry_valid = 60;
  e.attr_valid = 60;
  e.attr.ino = nodeid;
  e.attr.mode = 0100644;
  e.attr.nlink = 1;
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

TEST_F(KernelAnswersTest, NegativeAndPositiveLookupsStored) {
  uint64_t since = answers.begin();
  answers.store_lookup(1, "neg", 0, bytes(entry_out(0)), since);
  answers.store_lookup(1, "there", 0, bytes(positive(9)), since);
  answers.store_lookup(1, "eio", EIO, {}, since);
  EXPECT_TRUE(store.has_name(1, "neg"));
  EXPECT_EQ(store.names[name(1, "neg")].answer.error, 0);
  EXPECT_EQ(store.names[name(1, "neg")].answer.nodeid, 1u) << "answers for the parent";
  EXPECT_EQ(store.names[name(1, "neg")].answer.size, sizeof(k::fuse_entry_out));
  ASSERT_TRUE(store.has_name(1, "there"));
  k::fuse_entry_out want = positive(9);
  EXPECT_EQ(std::memcmp(store.names[name(1, "there")].answer.data, &want, sizeof want), 0);
  EXPECT_FALSE(store.has_name(1, "eio"));
  EXPECT_EQ(answers.stats().name_entries, 2u);
  EXPECT_EQ(answers.stats().positive_entries, 1u);
  // The index: removing "there" drops the attributes of node 9, and the name's entry.
  stat_reply(9);
  answers.name_removed(1, "there", true);
  EXPECT_FALSE(store.attrs.contains(9));
  EXPECT_FALSE(store.has_name(1, "there"));
}

TEST_F(KernelAnswersTest, PositiveEntriesGoWithTheNodesAttributes) {
  uint64_t since = answers.begin();
  answers.store_lookup(1, "a", 0, bytes(positive(9)), since);
  answers.store_lookup(2, "b", 0, bytes(positive(9)), since);  // a hard link
  answers.store_lookup(1, "c", 0, bytes(positive(10)), since);
  answers.attr_changed(9);  // chmod, write, an outside change...
  EXPECT_FALSE(store.has_name(1, "a"));
  EXPECT_FALSE(store.has_name(2, "b"));
  EXPECT_TRUE(store.has_name(1, "c"));
  answers.write_opened(10);
  EXPECT_FALSE(store.has_name(1, "c"));
  since = answers.begin();
  answers.store_lookup(1, "c", 0, bytes(positive(10)), since);
  EXPECT_FALSE(store.has_name(1, "c")) << "open for writing";
  answers.write_released(10);
  // Read before a change of the node's attributes: not stored.
  since = answers.begin();
  answers.attr_changed(10);
  answers.store_lookup(1, "c", 0, bytes(positive(10)), since);
  EXPECT_FALSE(store.has_name(1, "c"));
  EXPECT_EQ(answers.stats().positive_entries, 0u);
}

TEST_F(KernelAnswersTest, PositiveEntriesOnlyWhenTheyAreValidAndAskable) {
  uint64_t since = answers.begin();
  k::fuse_entry_out no_attr_time = positive(9);
  no_attr_time.attr_valid = 0;
  answers.store_lookup(1, "a", 0, bytes(no_attr_time), since);
  answers.store_lookup(1, "root", 0, bytes(positive(1)), since);
  answers.store_lookup(1, "..", 0, bytes(positive(5)), since);
  EXPECT_TRUE(store.names.empty());
  // Valid for the shorter of entry_valid and attr_valid.
  k::fuse_entry_out e = positive(9);
  e.entry_valid = 3600;
  e.attr_valid = 2;
  answers.store_lookup(1, "a", 0, bytes(e), since);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + now.tv_nsec;
  ASSERT_TRUE(store.has_name(1, "a"));
  EXPECT_LE(store.names[name(1, "a")].expires, now_ns + 2ULL * 1000000000ULL);
}

TEST_F(KernelAnswersTest, ANameThatNowLeadsElsewhereUnlinksTheOldNode) {
  uint64_t since = answers.begin();
  answers.store_lookup(1, "a", 0, bytes(positive(9)), since);
  answers.store_lookup(1, "a", 0, bytes(positive(10)), since);
  answers.attr_changed(9);  // no longer named by 1/a: the entry stays
  EXPECT_TRUE(store.has_name(1, "a"));
  answers.attr_changed(10);
  EXPECT_FALSE(store.has_name(1, "a"));
}

TEST_F(KernelAnswersTest, LookupsTakenFromAnswersAreHandedToTheNodeTableOnce) {
  uint64_t since = answers.begin();
  answers.store_lookup(1, "a", 0, bytes(positive(9)), since);
  EXPECT_EQ(answers.take(9), 0u);
  EXPECT_EQ(answers.take(5), 0u) << "never answered for";
  store.counts[9] = 3;  // the module took three entries for node 9
  store.counts[5] = 7;  // no positive answer was stored for 5: not read
  EXPECT_EQ(answers.take(9), 3u);
  EXPECT_EQ(answers.take(9), 0u);
  EXPECT_EQ(answers.take(5), 0u);
  store.counts[9] = 4;
  EXPECT_EQ(answers.take(9), 1u);
  EXPECT_EQ(answers.stats().tier_lookups, 4u);
  EXPECT_EQ(answers.stats().tier_nodes, 1u);
  // Dropped from the node table: answers and counter go.
  answers.withdraw(9);
  EXPECT_FALSE(store.has_name(1, "a"));
  EXPECT_FALSE(store.counts.contains(9));
  EXPECT_EQ(answers.take(9), 0u);
  EXPECT_EQ(answers.stats().tier_nodes, 0u);
}

TEST_F(KernelAnswersTest, ANodeTableFoldsTheLookupsSoForgetsMatchTheKernel) {
  // The whole contract of fs/node_table.h with this tier: the kernel holds node 9 with one
  // lookup efused sent and two the module took from a stored answer; its FORGET of 3
  // drops the node exactly, with no excess, and the tier forgets it.
  efuse::fs::NodeTable<int> table;
  table.set_tier(&answers);
  table.insert(9, std::make_shared<int>(0), 1);
  uint64_t since = answers.begin();
  answers.store_lookup(1, "a", 0, bytes(positive(9)), since);
  store.counts[9] = 2;
  EXPECT_NE(table.forget(9, 3), nullptr);
  EXPECT_EQ(table.excess_forgets(), 0u);
  EXPECT_FALSE(store.has_name(1, "a"));
  EXPECT_FALSE(store.counts.contains(9));
  // Without the tier the same FORGET would have been an excess.
  efuse::fs::NodeTable<int> blind;
  blind.insert(9, std::make_shared<int>(0), 1);
  blind.forget(9, 3);
  EXPECT_EQ(blind.excess_forgets(), 1u);
  table.set_tier(nullptr);
}

TEST_F(KernelAnswersTest, TierNodesAreBounded) {
  static_assert(KernelAnswers::kMaxTierNodes < EFUSE_ENTRY_COUNTERS, "room for key 0");
  KernelAnswers small{store, 3};
  uint64_t since = small.begin();
  for (const char* n : {"n2", "n3", "n4"})  // nodes 2, 3, 4
    small.store_lookup(1, n, 0, bytes(positive(n[1] - '0')), since);
  EXPECT_EQ(small.stats().tier_nodes, 3u);
  const uint64_t skipped = small.stats().stores_skipped;
  small.store_lookup(1, "more", 0, bytes(positive(1000000)), since);
  EXPECT_FALSE(store.has_name(1, "more"));
  EXPECT_EQ(small.stats().stores_skipped, skipped + 1);
  small.store_lookup(1, "again", 0, bytes(positive(2)), since);  // a node it has
  EXPECT_TRUE(store.has_name(1, "again"));
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

std::span<const char> text(const char* t) { return {t, std::strlen(t)}; }

TEST_F(KernelAnswersTest, XattrAnswersLiveForTheAttributeValidity) {
  uint64_t since = answers.begin();
  answers.store_xattr(7, "security.capability", ENODATA, 0, {}, since);
  EXPECT_TRUE(store.xattrs.empty()) << "no attributes sent yet: no validity known";
  answers.attr_validity(2, 0);
  answers.store_xattr(7, "security.capability", ENODATA, 0, {}, since);
  answers.store_xattr(7, "user.a", 0, 64, text("value"), since);
  answers.store_xattr(7, "", 0, 64, text("user.a"), since);  // the list
  ASSERT_EQ(store.xattrs.size(), 3u);
  const efuse_handler_entry& neg = store.xattrs[name(7, "security.capability")];
  EXPECT_EQ(neg.answer.error, -ENODATA);
  EXPECT_EQ(neg.answer.nodeid, 7u);
  EXPECT_EQ(neg.answer.size, 0u);
  const efuse_handler_entry& val = store.xattrs[name(7, "user.a")];
  ASSERT_EQ(val.answer.size, 5u);
  EXPECT_EQ(std::memcmp(val.answer.data, "value", 5), 0);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + now.tv_nsec;
  EXPECT_LE(neg.expires, now_ns + 2ULL * 1000000000ULL);
  EXPECT_EQ(answers.stats().xattr_entries, 3u);
}

TEST_F(KernelAnswersTest, XattrAnswersThatCannotBeStored) {
  answers.attr_validity(60, 0);
  uint64_t since = answers.begin();
  answers.store_xattr(7, "user.a", 0, 0, text("\x05\0\0\0\0\0\0\0"), since);  // a size query
  answers.store_xattr(7, "user.b", ERANGE, 4, {}, since);
  answers.store_xattr(7, "user.c", EACCES, 4, {}, since);
  answers.store_xattr(7, "", ENODATA, 4, {}, since);  // not an answer a list can have
  answers.store_xattr(7, "trusted.x", ENODATA, 0, {}, since);  // depends on the caller
  const std::string big(EFUSE_HANDLER_DATA_MAX + 1, 'v');
  answers.store_xattr(7, "user.big", 0, 4096, {big.data(), big.size()}, since);
  EXPECT_TRUE(store.xattrs.empty());
  answers.attr_changed(7);  // a change while a GETXATTR was being answered
  answers.store_xattr(7, "user.d", ENODATA, 0, {}, since);
  EXPECT_TRUE(store.xattrs.empty());
}

TEST_F(KernelAnswersTest, AbsencesSurviveWritesAndChownsValuesDoNot) {
  answers.attr_validity(60, 0);
  uint64_t since = answers.begin();
  answers.store_xattr(7, "security.capability", ENODATA, 0, {}, since);
  answers.store_xattr(7, "user.a", 0, 64, text("v"), since);
  answers.write_opened(7);
  answers.attr_changed(7);  // a WRITE, a chown: may remove an attribute, never add one
  EXPECT_TRUE(store.xattrs.contains(name(7, "security.capability")));
  EXPECT_FALSE(store.xattrs.contains(name(7, "user.a")));
  since = answers.begin();
  answers.store_xattr(7, "user.a", 0, 64, text("v"), since);
  EXPECT_FALSE(store.xattrs.contains(name(7, "user.a"))) << "open for writing";
  answers.store_xattr(7, "user.none", ENODATA, 0, {}, since);
  EXPECT_TRUE(store.xattrs.contains(name(7, "user.none"))) << "absences may be stored";
  // SETXATTR, REMOVEXATTR, an outside change: everything of the node goes.
  answers.xattrs_changed(7);
  EXPECT_TRUE(store.xattrs.empty());
  answers.store_xattr(8, "security.capability", ENODATA, 0, {}, answers.begin());
  answers.forgotten(8);
  EXPECT_TRUE(store.xattrs.empty());
  answers.store_xattr(9, "security.capability", ENODATA, 0, {}, answers.begin());
  answers.drop_all();
  EXPECT_TRUE(store.xattrs.empty());
}

TEST_F(KernelAnswersTest, AnExactBackendKeepsAnswersBeyondTheirValidity) {
  bool exact = true;
  answers.set_exact([&exact] { return exact; });
  stat_reply(7);
  uint64_t since = answers.begin();
  answers.store_lookup(1, "a", 0, bytes(positive(8)), since);
  absent(1, "none", since);
  answers.attr_validity(1, 0);
  answers.store_xattr(7, "security.capability", ENODATA, 0, {}, since);
  EXPECT_EQ(store.attrs[7].expires, UINT64_MAX) << "kept until a change drops it";
  EXPECT_EQ(store.names[name(1, "a")].expires, UINT64_MAX);
  EXPECT_EQ(store.names[name(1, "none")].expires, UINT64_MAX);
  EXPECT_EQ(store.xattrs[name(7, "security.capability")].expires, UINT64_MAX);
  // Still never for a reply valid for no time: the operator turned the cache off.
  k::fuse_attr_out zero = attr_out(9, 1);
  zero.attr_valid = 0;
  answers.store_attr(9, bytes(zero), answers.begin());
  EXPECT_FALSE(store.attrs.contains(9));
  // The changes drop them as before.
  answers.attr_changed(7);
  EXPECT_FALSE(store.attrs.contains(7));
  answers.name_changed_outside(1, "none");
  EXPECT_FALSE(store.names.contains(name(1, "none")));
}

TEST_F(KernelAnswersTest, ABackendThatStopsSeeingEveryChangeLosesEverythingKept) {
  bool exact = true;
  answers.set_exact([&exact] { return exact; });
  stat_reply(7);
  answers.store_lookup(1, "a", 0, bytes(positive(8)), answers.begin());
  ASSERT_EQ(store.attrs[7].expires, UINT64_MAX);
  exact = false;  // a directory could not be watched
  stat_reply(9);
  EXPECT_FALSE(store.attrs.contains(7)) << "kept beyond its validity: must go";
  EXPECT_FALSE(store.names.contains(name(1, "a")));
  EXPECT_FALSE(store.attrs.contains(9)) << "begun before everything went: not stored";
  stat_reply(9);
  ASSERT_TRUE(store.attrs.contains(9));
  EXPECT_LT(store.attrs[9].expires, UINT64_MAX) << "bounded by the validity again";
}

TEST_F(KernelAnswersTest, ACreatedNodeHasNoCapability) {
  answers.attr_validity(60, 0);
  uint64_t since = answers.begin();
  answers.node_created(20, since);
  EXPECT_TRUE(store.xattrs.empty()) << "no xattr reply seen yet: the backing store may have none";
  answers.store_xattr(7, "user.x", ENODATA, 0, {}, answers.begin());
  since = answers.begin();
  answers.node_created(20, since);
  ASSERT_TRUE(store.xattrs.contains(name(20, "security.capability")));
  const efuse_handler_entry& e = store.xattrs[name(20, "security.capability")];
  EXPECT_EQ(e.answer.nodeid, 20u);
  EXPECT_EQ(e.answer.error, -ENODATA);
  EXPECT_EQ(e.answer.size, 0u);
  // Writes keep it; SETXATTR (or an outside change) drops it.
  answers.write_opened(20);
  answers.attr_changed(20);
  EXPECT_TRUE(store.xattrs.contains(name(20, "security.capability")));
  answers.xattrs_changed(20);
  EXPECT_FALSE(store.xattrs.contains(name(20, "security.capability")));
  // A change between the creation and its reply keeps it out.
  since = answers.begin();
  answers.xattrs_changed(21);
  answers.node_created(21, since);
  EXPECT_FALSE(store.xattrs.contains(name(21, "security.capability")));
}

k::fuse_open_out open_body(const efuse_handler_entry& e) {
  k::fuse_open_out o;
  std::memcpy(&o, e.answer.data, sizeof o);
  return o;
}

TEST_F(KernelAnswersTest, StoresOpenAndFlushAnswers) {
  EXPECT_FALSE(answers.store_open(7, 0)) << "no backing id";
  EXPECT_FALSE(answers.store_open(7, -2));
  EXPECT_TRUE(store.opens.empty());
  ASSERT_TRUE(answers.store_open(7, 3));
  ASSERT_TRUE(store.opens.contains(7) && store.flushes.contains(7));
  const efuse_handler_entry& e = store.opens[7];
  EXPECT_EQ(e.answer.nodeid, 7u);
  EXPECT_EQ(e.answer.error, 0);
  EXPECT_EQ(e.answer.size, sizeof(k::fuse_open_out));
  EXPECT_EQ(e.expires, UINT64_MAX) << "kept exact by drops, never expires";
  const k::fuse_open_out o = open_body(e);
  EXPECT_EQ(o.fh, 0u) << "the module gives kernel opens their own fh";
  EXPECT_EQ(o.open_flags, k::kFopenPassthrough) << "the only flag the module takes";
  EXPECT_EQ(o.backing_id, 3);
  const efuse_handler_entry& f = store.flushes[7];
  EXPECT_EQ(f.answer.nodeid, 7u);
  EXPECT_EQ(f.answer.size, 0u);
  EXPECT_EQ(f.expires, UINT64_MAX);
  EXPECT_EQ(answers.stats().open_entries, 1u);
  EXPECT_EQ(answers.stats().flush_entries, 1u);
}

TEST_F(KernelAnswersTest, OpenAnswersGoWithTheAttributes) {
  for (uint64_t n : {7, 8, 9, 10, 11}) ASSERT_TRUE(answers.store_open(n, static_cast<int32_t>(n)));
  answers.attr_changed(7);  // SETATTR (chmod, chown, truncate), WRITE, ...
  answers.write_opened(8);
  answers.entry_sent(1, "nine", 9);
  answers.name_removed(1, "nine", true);  // UNLINK
  answers.entry_sent(1, "ten", 10);
  answers.name_moved(1, "ten", 1, "ten2", false, true);  // RENAME
  answers.xattrs_changed(11);  // outside change (the watcher)
  EXPECT_TRUE(store.opens.empty());
  EXPECT_EQ(answers.stats().open_entries, 0u);
  // The FLUSH answers stay: the open files' FLUSH needs no answer of efused's yet.
  EXPECT_EQ(store.flushes.size(), 5u);
  answers.write_released(8);
  EXPECT_TRUE(answers.store_open(8, 8)) << "stored anew at the next open efused serves";
}

TEST_F(KernelAnswersTest, ALockSendsFlushUpUntilTheNodeIsDropped) {
  ASSERT_TRUE(answers.store_open(7, 3));
  answers.lock_asked(7);
  EXPECT_FALSE(store.flushes.contains(7)) << "efused may hold a lock it drops at FLUSH";
  EXPECT_TRUE(store.opens.contains(7)) << "the open answer stays";
  answers.attr_changed(7);
  ASSERT_TRUE(answers.store_open(7, 3));
  EXPECT_FALSE(store.flushes.contains(7)) << "never again for this node";
  answers.forgotten(7);  // a FORGET: the node may live on
  ASSERT_TRUE(answers.store_open(7, 3));
  EXPECT_FALSE(store.flushes.contains(7)) << "still the same node";
  answers.withdraw(7);  // dropped: no file of it is open, no lock held
  EXPECT_TRUE(store.opens.empty());
  ASSERT_TRUE(answers.store_open(7, 3));
  EXPECT_TRUE(store.flushes.contains(7));
  answers.lock_asked(8);  // a lock on a node without answers
  ASSERT_TRUE(answers.store_open(8, 4));
  EXPECT_FALSE(store.flushes.contains(8));
}

// CREATE and opens for writing in passthrough mode (kmod patch 0013): only their FLUSH.
TEST_F(KernelAnswersTest, StoresFlushAnswersOfPassthroughOpens) {
  answers.store_flush(0);
  EXPECT_TRUE(store.flushes.empty());
  answers.store_flush(12);
  ASSERT_TRUE(store.flushes.contains(12));
  EXPECT_FALSE(store.opens.contains(12)) << "no open answer for an open for writing";
  const efuse_handler_entry& f = store.flushes[12];
  EXPECT_EQ(f.answer.nodeid, 12u);
  EXPECT_EQ(f.answer.error, 0);
  EXPECT_EQ(f.answer.size, 0u);
  EXPECT_EQ(f.expires, UINT64_MAX);
  EXPECT_EQ(answers.stats().flush_entries, 1u);
  answers.write_opened(12);  // writes go to the backing file: FLUSH has nothing to do
  answers.attr_changed(12);
  EXPECT_TRUE(store.flushes.contains(12));
  answers.lock_asked(12);
  EXPECT_FALSE(store.flushes.contains(12)) << "efused may hold a lock it drops at FLUSH";
  answers.store_flush(12);
  EXPECT_FALSE(store.flushes.contains(12)) << "never again for this node";
  answers.lock_asked(13);
  answers.store_flush(13);
  EXPECT_FALSE(store.flushes.contains(13));
  answers.allow_opens(false);  // no default_permissions: FLUSH answers grant no access
  answers.store_flush(14);
  EXPECT_TRUE(store.flushes.contains(14));
  answers.forgotten(14);
  EXPECT_FALSE(store.flushes.contains(14));
}

TEST_F(KernelAnswersTest, OpenAnswersDroppedAtForgetAndDropAll) {
  ASSERT_TRUE(answers.store_open(7, 3));
  answers.forgotten(7);
  EXPECT_TRUE(store.opens.empty() && store.flushes.empty());
  ASSERT_TRUE(answers.store_open(7, 3));
  answers.drop_all();
  EXPECT_TRUE(store.opens.empty() && store.flushes.empty());
  EXPECT_EQ(answers.stats().open_entries, 0u);
  EXPECT_EQ(answers.stats().flush_entries, 0u);
  answers.allow_opens(false);  // a mount without default_permissions
  EXPECT_FALSE(answers.store_open(7, 3));
  EXPECT_TRUE(store.opens.empty());
  answers.allow_opens(true);
  store.full = true;
  EXPECT_FALSE(answers.store_open(7, 3)) << "a full map";
  EXPECT_EQ(answers.stats().open_entries, 0u);
}

// The slots of a node's ACCESS entry, as the handler reads them.
std::vector<efuse_access_slot> access_slots(const efuse_handler_entry& e) {
  std::vector<efuse_access_slot> v(e.answer.size / sizeof(efuse_access_slot));
  std::memcpy(v.data(), e.answer.data, v.size() * sizeof(efuse_access_slot));
  return v;
}

// ACCESS replies (kmod patch 0017): one slot per (uid, gid, mask), the error as the module
// takes it (negative), for the attribute validity efused sent last and never beyond it
// (also on an exact backend); errors the module would refuse are not stored; a change of
// the node's attributes or ACLs, its FORGET and drop_all take them all.
TEST_F(KernelAnswersTest, AccessAnswersPerCallerForTheAttributeValidityOnly) {
  answers.set_exact([] { return true; });
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());
  EXPECT_TRUE(store.access.empty()) << "no attribute validity sent yet";
  answers.attr_validity(2, 0);
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());       // R_OK granted
  answers.store_access(7, 1000, 100, 2, EACCES, answers.begin());  // W_OK denied
  answers.store_access(7, 0, 0, 2, EROFS, answers.begin());
  answers.store_access(7, 1001, 100, 4, ENOENT, answers.begin());  // not an answer to keep
  answers.store_access(7, 1001, 100, 4, ESTALE, answers.begin());
  ASSERT_TRUE(store.access.contains(7));
  const efuse_handler_entry& e = store.access[7];
  EXPECT_EQ(e.answer.nodeid, 7u);
  EXPECT_EQ(e.answer.error, 0);
  auto slots = access_slots(e);
  ASSERT_EQ(slots.size(), 3u);
  EXPECT_EQ(slots[0].uid, 1000u);
  EXPECT_EQ(slots[0].gid, 100u);
  EXPECT_EQ(slots[0].mask, 4u);
  EXPECT_EQ(slots[0].error, 0);
  EXPECT_EQ(slots[1].error, -EACCES);
  EXPECT_EQ(slots[2].error, -EROFS);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + now.tv_nsec;
  for (const auto& s : slots) {
    EXPECT_GT(s.expires, now_ns + 1000000000ULL);
    EXPECT_LE(s.expires, now_ns + 2000000000ULL) << "bounded although the backend is exact";
  }
  EXPECT_EQ(e.expires, std::max({slots[0].expires, slots[1].expires, slots[2].expires}));
  EXPECT_EQ(answers.stats().access_entries, 1u);

  // The same caller and mask again: its slot is renewed, not doubled.
  answers.store_access(7, 1000, 100, 2, 0, answers.begin());
  slots = access_slots(store.access[7]);
  ASSERT_EQ(slots.size(), 3u);
  EXPECT_EQ(slots[1].error, 0);

  // A chmod (SETATTR), an ACL (SETXATTR), an outside change, FORGET, drop_all: all gone.
  answers.attr_changed(7);
  EXPECT_TRUE(store.access.empty());
  EXPECT_EQ(answers.stats().access_entries, 0u);
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());
  answers.xattrs_changed(7);
  EXPECT_TRUE(store.access.empty());
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());
  answers.node_changed_outside(7);
  EXPECT_TRUE(store.access.empty());
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());
  answers.forgotten(7);
  EXPECT_TRUE(store.access.empty());
  answers.store_access(7, 1000, 100, 4, 0, answers.begin());
  answers.drop_all();
  EXPECT_TRUE(store.access.empty());
}

// A change of the node after the ACCESS was asked and before its reply was kept skips it;
// a node with EFUSE_ACCESS_SLOTS callers gives the slot that expires first to a new one.
TEST_F(KernelAnswersTest, AccessAnswerRacingAChangeIsNotStoredAndSlotsAreBounded) {
  answers.attr_validity(60, 0);
  const uint64_t since = answers.begin();
  answers.attr_changed(7);  // a chmod that ran while efused asked the backing file system
  answers.store_access(7, 1000, 100, 4, 0, since);
  EXPECT_TRUE(store.access.empty());
  EXPECT_EQ(answers.stats().stores_skipped, 1u);

  for (uint32_t uid = 1; uid <= EFUSE_ACCESS_SLOTS; ++uid)
    answers.store_access(7, uid, uid, 4, 0, answers.begin());
  auto slots = access_slots(store.access[7]);
  ASSERT_EQ(slots.size(), EFUSE_ACCESS_SLOTS);
  EXPECT_EQ(slots[0].uid, 1u);
  answers.store_access(7, 99, 99, 4, EACCES, answers.begin());
  slots = access_slots(store.access[7]);
  ASSERT_EQ(slots.size(), EFUSE_ACCESS_SLOTS);
  EXPECT_EQ(slots[0].uid, 99u) << "the slot that expired first (the oldest) gave way";
  EXPECT_EQ(slots[0].error, -EACCES);
  EXPECT_EQ(slots[1].uid, 2u);
}

// STATFS replies: the exact reply, for the statfs timeout from now and never longer (also
// on an exact backend: nothing reports a change of the file system's statistics); nothing
// for a timeout of 0 or a reply of another size; gone at FORGET and drop_all.
TEST_F(KernelAnswersTest, StatfsAnswersLiveForTheStatfsTimeoutOnly) {
  answers.set_exact([] { return true; });
  k::fuse_statfs_out st{};
  st.st.blocks = 1000;
  st.st.bfree = 400;
  st.st.bsize = 4096;
  answers.store_statfs(7, bytes(st), 1.5);
  ASSERT_TRUE(store.statfs.contains(7));
  const efuse_handler_entry& e = store.statfs[7];
  EXPECT_EQ(e.answer.nodeid, 7u);
  ASSERT_EQ(e.answer.size, sizeof st);
  EXPECT_EQ(std::memcmp(e.answer.data, &st, sizeof st), 0);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + now.tv_nsec;
  EXPECT_GT(e.expires, now_ns + 1400000000ULL);
  EXPECT_LE(e.expires, now_ns + 1500000000ULL) << "bounded although the backend is exact";
  EXPECT_EQ(answers.stats().statfs_entries, 1u);
  answers.store_statfs(8, bytes(st), 0);  // statfs_timeout 0
  answers.store_statfs(9, std::span<const char>(reinterpret_cast<const char*>(&st), 8), 1);
  EXPECT_FALSE(store.statfs.contains(8));
  EXPECT_FALSE(store.statfs.contains(9));
  answers.forgotten(7);
  EXPECT_TRUE(store.statfs.empty());
  answers.store_statfs(7, bytes(st), 1);
  answers.drop_all();
  EXPECT_TRUE(store.statfs.empty());
  EXPECT_EQ(answers.stats().statfs_entries, 0u);
  store.full = true;
  const uint64_t skipped = answers.stats().stores_skipped;
  answers.store_statfs(7, bytes(st), 1);
  EXPECT_EQ(answers.stats().statfs_entries, 0u) << "a full map";
  EXPECT_EQ(answers.stats().stores_skipped, skipped + 1);
}

TEST_F(KernelAnswersTest, ReadBlocksRacingAChangeAreNotStored) {
  const std::string data(5000, 'r');
  const FileStamp v1{5000, 0};
  const uint64_t since = answers.begin();
  answers.attr_changed(9);  // a WRITE answered while the READ read the old bytes
  answers.store_read(9, 0, 8192, data, v1, since);
  EXPECT_TRUE(store.blocks_of(9).empty());
  answers.write_opened(9);
  answers.store_read(9, 0, 8192, data, v1, answers.begin());
  EXPECT_TRUE(store.blocks_of(9).empty()) << "nothing while open for writing";
  answers.write_released(9);
  answers.store_read(9, 0, 8192, data, FileStamp{4000, 0}, answers.begin());
  EXPECT_TRUE(store.blocks_of(9).empty()) << "the file changed between its stamp and read";
  answers.store_read(9, 0, 8192, data, v1, answers.begin());
  EXPECT_EQ(store.blocks_of(9).size(), 2u);
  // Each version of the file has a generation of its own.
  const uint64_t gen = store.blocks_of(9)[0].gen;
  answers.xattrs_changed(9);  // what the watcher's invalidation of the node does
  EXPECT_TRUE(store.blocks_of(9).empty());
  answers.store_read(9, 0, 8192, data, v1, answers.begin());
  EXPECT_NE(store.blocks_of(9)[0].gen, gen);
  // Attributes efused sends with the same size and mtime keep the blocks; another size or
  // mtime (a change the watcher did not see) drops them, as the kernel drops its pages.
  stat_reply(9, 5000);
  EXPECT_EQ(store.blocks_of(9).size(), 2u);
  stat_reply(9, 5001);
  EXPECT_TRUE(store.blocks_of(9).empty());
  answers.store_read(9, 0, 8192, data, v1, answers.begin());
  answers.forgotten(9);
  EXPECT_TRUE(store.blocks_of(9).empty());
  EXPECT_EQ(answers.stats().read_blocks, 0u);
}

TEST_F(KernelAnswersTest, AFullSetReplacesItsLeastRecentlyUsedBlock) {
  // Sixteen blocks, four sets of four: store single blocks of many files until one set is
  // full, then one more of that set.
  const std::string block(4096, 'b');
  std::map<uint32_t, std::vector<uint64_t>> by_set;
  uint64_t node = 100;
  uint32_t full_set = 0;
  for (;; ++node) {
    const uint32_t set = efuse_read_set(node, 0, 4);
    by_set[set].push_back(node);
    answers.store_read(node, 0, 4096, block, FileStamp{4096, 0}, answers.begin());
    if (by_set[set].size() == EFUSE_READ_WAYS + 1) {
      full_set = set;
      break;
    }
  }
  const std::vector<uint64_t>& nodes = by_set[full_set];
  EXPECT_TRUE(store.blocks_of(nodes[0]).empty()) << "the oldest went";
  for (size_t i = 1; i < nodes.size(); ++i) EXPECT_EQ(store.blocks_of(nodes[i]).size(), 1u);
  EXPECT_EQ(answers.stats().read_evictions, 1u);
  EXPECT_EQ(answers.stats().read_capacity, 16u);
  // A hit (the handler stamps `used`) keeps a block: the next eviction takes another.
  for (efuse_read_block& b : store.pool)
    if (b.gen != 0 && b.nodeid == nodes[1]) b.used = UINT64_MAX;
  uint64_t next = node + 1;
  while (efuse_read_set(next, 0, 4) != full_set) ++next;
  answers.store_read(next, 0, 4096, block, FileStamp{4096, 0}, answers.begin());
  EXPECT_EQ(store.blocks_of(nodes[1]).size(), 1u);
  EXPECT_TRUE(store.blocks_of(nodes[2]).empty());
}

// Negative LOOKUPs of new names (efuse_complete_dirs, efuse_dir_names): a directory made
// through the mount is complete, every name that may be made in it goes into its index first.
class CompleteDirs : public KernelAnswersTest {
 protected:
  CompleteDirs() {
    answers.set_exact([this] { return exact; });
  }
  void mkdir_reply(uint64_t dir, uint64_t neg_sec = 1) {
    answers.dir_complete(dir, neg_sec, answers.begin());
  }
  bool negative(uint64_t parent, const std::string& n) const {
    return store.negative_for(parent, n) != nullptr;
  }
  bool exact = true;
};

TEST_F(CompleteDirs, ANewDirectoryAnswersEveryNameNegativeAsEfusedWould) {
  mkdir_reply(20, 1);
  ASSERT_TRUE(store.complete.contains(20));
  const efuse_handler_entry& e = store.complete[20];
  EXPECT_EQ(e.expires, UINT64_MAX);
  EXPECT_EQ(e.answer.nodeid, 20u) << "answers for the directory the LOOKUP names";
  EXPECT_EQ(e.answer.error, 0);
  ASSERT_EQ(e.answer.size, sizeof(k::fuse_entry_out));
  k::fuse_entry_out out;
  std::memcpy(&out, e.answer.data, sizeof out);
  EXPECT_EQ(out.nodeid, 0u);
  EXPECT_EQ(out.entry_valid, 1u) << "cached for negative_timeout, as efused's own reply";
  EXPECT_TRUE(negative(20, "anything"));
  // negative_timeout 0: efused answers ENOENT, which nobody caches.
  mkdir_reply(21, 0);
  ASSERT_TRUE(store.complete.contains(21));
  EXPECT_EQ(store.complete[21].answer.error, -ENOENT);
  EXPECT_EQ(store.complete[21].answer.size, 0u);
  EXPECT_EQ(answers.stats().complete_dirs, 2u);
  // Never the root (whose names efused never saw made), nor while changes may go unseen.
  mkdir_reply(1);
  exact = false;
  mkdir_reply(22);
  EXPECT_FALSE(store.complete.contains(1));
  EXPECT_FALSE(store.complete.contains(22));
  EXPECT_TRUE(store.complete.empty()) << "the backend stopped seeing every change: all go";
}

TEST_F(CompleteDirs, NamesGoInBeforeTheyAreMadeAndOutAfterTheyAreRemoved) {
  mkdir_reply(20);
  answers.name_adding(20, "f");  // CREATE, before the backend makes it
  EXPECT_FALSE(negative(20, "f")) << "a LOOKUP racing the create goes up";
  EXPECT_TRUE(negative(20, "g"));
  answers.name_adding(20, "f");  // twice: one name
  EXPECT_EQ(answers.stats().dir_names, 1u);
  answers.name_gone(20, "f");  // UNLINK done
  EXPECT_TRUE(negative(20, "f"));
  EXPECT_EQ(answers.stats().dir_names, 0u);
  answers.name_adding(30, "x");  // not complete: nothing kept
  EXPECT_TRUE(store.dir_names.empty());
  // A stored absence of the name would be answered first: it goes before the operation.
  absent(20, "h", answers.begin());
  absent(30, "h", answers.begin());
  ASSERT_TRUE(store.has_name(20, "h"));
  answers.name_adding(20, "h");
  answers.name_adding(30, "h");
  EXPECT_FALSE(store.has_name(20, "h"));
  EXPECT_FALSE(store.has_name(30, "h"));
  EXPECT_FALSE(negative(20, "h"));
  answers.name_gone(20, "never");
  EXPECT_TRUE(store.complete.contains(20));
}

TEST_F(CompleteDirs, AFullMapOrAFailedCreateTakesTheMarkAwayFirst) {
  mkdir_reply(20);
  answers.name_adding(20, "a");
  store.dir_names_full = true;
  answers.name_adding(20, "b");
  EXPECT_FALSE(store.complete.contains(20)) << "b may be made and is in no index";
  EXPECT_FALSE(negative(20, "b"));
  EXPECT_TRUE(store.dir_names.empty());
  store.dir_names_full = false;
  mkdir_reply(21);
  answers.name_adding(21, "c");
  answers.names_unknown(21);  // the CREATE failed: made or not, efused cannot tell
  EXPECT_FALSE(store.complete.contains(21));
  EXPECT_EQ(answers.stats().dir_names, 0u);
  EXPECT_EQ(answers.stats().complete_dirs, 0u);
  // The marks went before their names (the handler reads a name before the mark).
  EXPECT_EQ(store.names_dropped_under_mark, 0);
}

TEST_F(CompleteDirs, OutsideChangesForgetAndDropAllTakeTheMarkAway) {
  for (uint64_t d : {20, 21, 22, 23, 24}) {
    mkdir_reply(d);
    answers.name_adding(d, "mine");
  }
  answers.name_changed_outside(20, "theirs");  // the watcher saw a name change in it
  answers.node_changed_outside(21);            // ... or the directory itself (an overflow)
  answers.forgotten(22);
  answers.withdraw(23);
  for (uint64_t d : {20, 21, 22, 23}) {
    EXPECT_FALSE(store.complete.contains(d)) << d;
    EXPECT_FALSE(negative(d, "theirs")) << d;
  }
  EXPECT_TRUE(store.complete.contains(24));
  EXPECT_TRUE(negative(24, "theirs"));
  answers.name_changed_outside(24, "elsewhere");
  EXPECT_FALSE(store.complete.contains(24));
  mkdir_reply(25);
  answers.name_adding(25, "x");
  answers.drop_all();  // negative_timeout changed
  EXPECT_TRUE(store.complete.empty());
  EXPECT_TRUE(store.dir_names.empty());
  EXPECT_EQ(store.names_dropped_under_mark, 0) << "marks go before their names";
}

TEST_F(CompleteDirs, AChangeRacingTheMkdirKeepsItIncomplete) {
  const uint64_t since = answers.begin();
  answers.name_changed_outside(20, "early");  // the watcher, between mkdir and its reply
  answers.dir_complete(20, 1, since);
  EXPECT_FALSE(store.complete.contains(20));
  EXPECT_EQ(answers.stats().stores_skipped, 1u);
}

}  // namespace
}  // namespace fuse

// The shared nodeid and lookup-count bookkeeping (fs/node_table.h), its FORGET contract
// included: lookups the kernel tier answered are folded in before a FORGET, so a FORGET for
// more than efused counted neither drops a node the kernel still holds nor leaks one.
#include "fs/node_table.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>

namespace efuse::fs {
namespace {

struct Obj {
  int value = 0;
  bool linked = false;
};

// The tier's per-nodeid counts: the map efused owns (a BPF map in the kernel tier).
class CountingTier final : public TierLookups {
 public:
  uint64_t take(uint64_t nodeid) override {
    uint64_t n = counts[nodeid];
    counts[nodeid] = 0;
    // A lookup the tier answers while efused is between fold and withdrawal.
    if (answer_during_take > 0 && withdrawn.count(nodeid)) {
      n += answer_during_take;
      answer_during_take = 0;
    }
    return n;
  }
  void withdraw(uint64_t nodeid) override { withdrawn.insert(nodeid); }
  // The tier answered a LOOKUP: it may do so only while efused holds the node.
  void answer(uint64_t nodeid) { ++counts[nodeid]; }

  std::map<uint64_t, uint64_t> counts;
  std::set<uint64_t> withdrawn;
  uint64_t answer_during_take = 0;
};

TEST(NodeTable, NodeidsAreNeverReusedAndTheRootIsOne) {
  NodeTable<Obj> t;
  t.set_root(std::make_shared<Obj>());
  uint64_t a = t.allocate();
  t.insert(a, std::make_shared<Obj>(), 1);
  EXPECT_EQ(a, 2u);
  EXPECT_NE(t.forget(a, 1), nullptr);
  uint64_t b = t.allocate();
  EXPECT_GT(b, a);  // a is gone, but the kernel may still name it: never handed out again
  EXPECT_EQ(t.get(a), nullptr);
  EXPECT_NE(t.get(NodeTable<Obj>::kRoot), nullptr);
}

TEST(NodeTable, ANodeGoesWhenTheKernelCountReachesZero) {
  NodeTable<Obj> t;
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  EXPECT_TRUE(t.ref(id));
  EXPECT_TRUE(t.ref(id));
  EXPECT_EQ(t.referenced(), 1u);
  EXPECT_EQ(t.forget(id, 2), nullptr);
  EXPECT_EQ(t.lookups(id), 1u);
  EXPECT_NE(t.forget(id, 1), nullptr);
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.referenced(), 0u);
  EXPECT_EQ(t.excess_forgets(), 0u);
  EXPECT_FALSE(t.ref(id));
}

TEST(NodeTable, TheRootIsNeverDropped) {
  NodeTable<Obj> t;
  t.set_root(std::make_shared<Obj>());
  EXPECT_EQ(t.forget(NodeTable<Obj>::kRoot, 5), nullptr);
  EXPECT_NE(t.get(NodeTable<Obj>::kRoot), nullptr);
  EXPECT_EQ(t.referenced(), 1u);
}

TEST(NodeTable, ABackendMayKeepANodeTheKernelForgot) {
  NodeTable<Obj> t;
  uint64_t id = t.allocate();
  auto obj = std::make_shared<Obj>();
  obj->linked = true;
  t.insert(id, obj, 1);
  auto keep = [](const Obj& o) { return o.linked; };
  EXPECT_EQ(t.forget(id, 1, keep), nullptr);
  EXPECT_EQ(t.get(id), obj);  // still has a name: stays, unreferenced
  EXPECT_EQ(t.referenced(), 0u);
  EXPECT_EQ(t.erase_unreferenced(id), obj);
  EXPECT_EQ(t.get(id), nullptr);
}

TEST(NodeTable, EraseUnreferencedLeavesNodesTheKernelHolds) {
  NodeTable<Obj> t;
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  EXPECT_EQ(t.erase_unreferenced(id), nullptr);
  EXPECT_NE(t.get(id), nullptr);
}

// Without a tier, a FORGET for more than the table counted is a bug: counted, and the node
// dropped (the kernel holds nothing more); a FORGET of an unknown nodeid is counted too.
TEST(NodeTable, ExcessForgetWithoutATierIsCountedAndDrops) {
  NodeTable<Obj> t;
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  EXPECT_NE(t.forget(id, 3), nullptr);
  EXPECT_EQ(t.excess_forgets(), 1u);
  EXPECT_EQ(t.forget(id, 1), nullptr);
  EXPECT_EQ(t.excess_forgets(), 2u);
}

// The kernel tier answered two lookups efused never saw: the kernel's count is 3 while the
// table's is 1. A FORGET of 2 must not drop the node (the kernel still holds one), and the
// FORGET of the last one must drop it (no leak), with nothing counted as excess.
TEST(NodeTable, TierLookupsAreFoldedSoForgetsMeetTheKernelsCount) {
  NodeTable<Obj> t;
  CountingTier tier;
  t.set_tier(&tier);
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  tier.answer(id);
  tier.answer(id);
  EXPECT_EQ(t.forget(id, 2), nullptr);
  EXPECT_NE(t.get(id), nullptr);
  EXPECT_EQ(t.lookups(id), 1u);
  EXPECT_TRUE(tier.withdrawn.empty());  // still held: the tier may go on answering
  EXPECT_NE(t.forget(id, 1), nullptr);
  EXPECT_EQ(t.get(id), nullptr);
  EXPECT_EQ(tier.withdrawn.count(id), 1u);  // withdrawn before it was dropped
  EXPECT_EQ(t.excess_forgets(), 0u);
  t.set_tier(nullptr);
}

// A lookup the tier answered between the fold and the withdrawal keeps the node.
TEST(NodeTable, ALookupAnsweredDuringTheWithdrawalKeepsTheNode) {
  NodeTable<Obj> t;
  CountingTier tier;
  t.set_tier(&tier);
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  tier.answer_during_take = 1;
  EXPECT_EQ(t.forget(id, 1), nullptr);
  EXPECT_EQ(t.lookups(id), 1u);
  EXPECT_EQ(t.referenced(), 1u);
  EXPECT_NE(t.forget(id, 1), nullptr);
  EXPECT_EQ(t.excess_forgets(), 0u);
  t.set_tier(nullptr);
}

// Even with the tier's counts folded, a FORGET beyond the kernel's count is a bug: counted,
// node dropped.
TEST(NodeTable, ForgetBeyondTheFoldedCountIsCounted) {
  NodeTable<Obj> t;
  CountingTier tier;
  t.set_tier(&tier);
  uint64_t id = t.allocate();
  t.insert(id, std::make_shared<Obj>(), 1);
  tier.answer(id);
  EXPECT_NE(t.forget(id, 5), nullptr);
  EXPECT_EQ(t.excess_forgets(), 1u);
  t.set_tier(nullptr);
}

TEST(NodeTable, VisitBucketsSeesEveryNodeOnce) {
  NodeTable<Obj> t;
  std::set<uint64_t> ids;
  for (int i = 0; i < 1000; ++i) {
    uint64_t id = t.allocate();
    t.insert(id, std::make_shared<Obj>(), 1);
    ids.insert(id);
  }
  std::multiset<uint64_t> seen;
  for (size_t b = 0; (b = t.visit_buckets(b, 7, [&](uint64_t id, const Obj&) { seen.insert(id); })) != 0;) {
  }
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()), ids);
  EXPECT_EQ(seen.size(), ids.size());
}

TEST(NodeTable, MetricsNameTheTablesCounts) {
  std::vector<Metric> out;
  add_node_metrics(out, 7, 2);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_STREQ(out[0].name, "efuse_inodes");
  EXPECT_EQ(out[0].value, 7);
  EXPECT_STREQ(out[1].name, "efuse_forget_excess_total");
  EXPECT_EQ(out[1].type, Metric::Type::Counter);
  EXPECT_EQ(out[1].value, 2);
}

}  // namespace
}  // namespace efuse::fs

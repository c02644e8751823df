// Nodeids and lookup counts, kept the same way by every backend.
//
// A nodeid is the name the kernel uses for an object. The table hands them out (1 is the
// root; the others count up from 2 and are never reused, so a nodeid the kernel may still
// hold names one object forever) and keeps, per nodeid, the object and the kernel's lookup
// count: every entry reply (lookup, create, mkdir, mknod, symlink, link, and each
// readdirplus entry but . and ..) adds one, FORGET and BATCH_FORGET subtract.
//
// What happens at zero is the backend's choice: a stacking backend (passthrough) holds an
// object only for the kernel and drops it; a backend that is the file system itself
// (memory) keeps an object that still has names and drops it when the last name goes too.
//
// Lookups the kernel answers without efused seeing them (the kernel tier's LOOKUP
// handlers, tier 3 of ARCHITECTURE.md) raise the kernel's count above the table's. The
// contract that keeps FORGET exact anyway:
//   1. the tier answers only for nodes whose count the table holds above zero, and the
//      table withdraws a node from the tier (TierLookups::withdraw) before it drops it;
//   2. the tier counts the lookups it answered per nodeid, in a map efused owns
//      (TierLookups::take reads and zeroes one nodeid's count);
//   3. before a FORGET is applied, the tier's count for that nodeid is folded into the
//      table's, so every FORGET meets the kernel's full count: a node reaches zero exactly
//      when the kernel's count does. At zero the node is withdrawn from the tier, and a
//      count the tier added between the fold and the withdrawal is folded too (the node
//      then stays).
// A FORGET still exceeding the folded count is a bookkeeping bug: it is counted
// (excess_forgets(), exported as efuse_forget_excess_total), logged once, and the count
// goes to zero (the kernel holds nothing more to forget). A FORGET for an unknown nodeid
// (already dropped) is counted the same way and changes nothing. The root is never dropped.
//
// Thread-safe (one shared_mutex); a backend that must see its own state and the count
// together calls in while holding its own lock (never the other way round).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "fs/filesystem.h"

namespace efuse::fs {

// The kernel tier's side of the contract above: the lookups it answered per nodeid.
class TierLookups {
 public:
  virtual ~TierLookups() = default;
  // Lookups of `nodeid` the tier answered since the last take; zeroes them.
  virtual uint64_t take(uint64_t nodeid) = 0;
  // The tier stops answering for `nodeid` (its entries are removed from the tier's maps).
  virtual void withdraw(uint64_t nodeid) = 0;
};

template <class Node>
class NodeTable {
 public:
  static constexpr uint64_t kRoot = 1;

  // Installs the root (nodeid 1) with one lookup, which no FORGET takes away.
  void set_root(std::shared_ptr<Node> root) {
    std::unique_lock lk(mu_);
    auto [it, added] = slots_.insert_or_assign(kRoot, Slot{std::move(root), 1});
    if (added) referenced_.fetch_add(1, std::memory_order_relaxed);
  }
  // A fresh nodeid: never handed out before.
  uint64_t allocate() { return next_.fetch_add(1, std::memory_order_relaxed); }
  // Nodeids below `next` were handed out already (by the efused before a restart, whose
  // table is being restored): allocate() returns none of them.
  void reserve_below(uint64_t next) {
    uint64_t cur = next_.load();
    while (cur < next && !next_.compare_exchange_weak(cur, next)) {
    }
  }
  // Adds `node` under a nodeid from allocate(), with `lookups` references.
  void insert(uint64_t nodeid, std::shared_ptr<Node> node, uint64_t lookups) {
    std::unique_lock lk(mu_);
    slots_[nodeid] = Slot{std::move(node), lookups};
    if (lookups != 0) referenced_.fetch_add(1, std::memory_order_relaxed);
  }
  std::shared_ptr<Node> get(uint64_t nodeid) const {
    std::shared_lock lk(mu_);
    auto it = slots_.find(nodeid);
    return it == slots_.end() ? nullptr : it->second.node;
  }
  // One more lookup reference (an entry reply); false when the nodeid is not in the table.
  bool ref(uint64_t nodeid) {
    std::unique_lock lk(mu_);
    auto it = slots_.find(nodeid);
    if (it == slots_.end()) return false;
    if (it->second.lookups++ == 0) referenced_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  // The table's count for `nodeid` (the tier's not folded in); 0 when unknown.
  uint64_t lookups(uint64_t nodeid) const {
    std::shared_lock lk(mu_);
    auto it = slots_.find(nodeid);
    return it == slots_.end() ? 0 : it->second.lookups;
  }

  // FORGET of `n` lookups. When the count reaches zero the node is withdrawn from the tier
  // and, unless keep(node) says the backend still holds it, dropped from the table and
  // returned (so the caller can release it outside its locks). keep may be empty (drop).
  std::shared_ptr<Node> forget(uint64_t nodeid, uint64_t n,
                               const std::function<bool(const Node&)>& keep = {}) {
    std::unique_lock lk(mu_);
    auto it = slots_.find(nodeid);
    if (it == slots_.end()) {
      excess(nodeid, n, 0);
      return nullptr;
    }
    Slot& s = it->second;
    const bool held = s.lookups != 0;
    if (tier_ != nullptr) s.lookups += tier_->take(nodeid);
    if (n > s.lookups) {
      excess(nodeid, n, s.lookups);
      n = s.lookups;
    }
    s.lookups -= n;
    if (nodeid == kRoot && s.lookups == 0) s.lookups = 1;  // the kernel never lets go of it
    if (s.lookups == 0 && tier_ != nullptr) {
      tier_->withdraw(nodeid);
      s.lookups += tier_->take(nodeid);  // answered between the fold and the withdrawal
    }
    if (held != (s.lookups != 0)) {
      if (held) referenced_.fetch_sub(1, std::memory_order_relaxed);
      else referenced_.fetch_add(1, std::memory_order_relaxed);
    }
    if (s.lookups != 0) return nullptr;
    if (keep && keep(*s.node)) return nullptr;
    std::shared_ptr<Node> dropped = std::move(s.node);
    slots_.erase(it);
    return dropped;
  }
  // Drops a node the kernel holds no reference to (the backend's object is gone: a memory
  // file whose last name was removed after the kernel forgot it). Returns it; null when
  // the node is unknown or the kernel still holds it.
  std::shared_ptr<Node> erase_unreferenced(uint64_t nodeid) {
    std::unique_lock lk(mu_);
    auto it = slots_.find(nodeid);
    if (it == slots_.end() || it->second.lookups != 0 || nodeid == kRoot) return nullptr;
    std::shared_ptr<Node> dropped = std::move(it->second.node);
    slots_.erase(it);
    return dropped;
  }

  // Visits the nodes of `count` hash buckets from `bucket` under the shared lock, for a
  // scan of a big table a slice at a time: fn(nodeid, node). Returns where the scan goes
  // on, 0 when it is done (start it at 0). A rehash between slices renumbers the buckets:
  // the scan may then miss or repeat some nodes.
  template <class F>
  size_t visit_buckets(size_t bucket, size_t count, F&& fn) const {
    std::shared_lock lk(mu_);
    size_t end = std::min(slots_.bucket_count(), bucket + count);
    if (bucket >= end) return 0;
    for (; bucket < end; ++bucket)
      for (auto it = slots_.begin(bucket); it != slots_.end(bucket); ++it)
        fn(it->first, *it->second.node);
    return end;
  }
  void clear() {
    std::unique_lock lk(mu_);
    slots_.clear();
    referenced_.store(0, std::memory_order_relaxed);
  }
  // Every node in the table.
  std::vector<std::shared_ptr<Node>> all() const {
    std::shared_lock lk(mu_);
    std::vector<std::shared_ptr<Node>> out;
    out.reserve(slots_.size());
    for (const auto& [id, s] : slots_) out.push_back(s.node);
    return out;
  }
  // Nodes in the table (held by the kernel or kept by the backend).
  size_t size() const {
    std::shared_lock lk(mu_);
    return slots_.size();
  }
  // Nodes the kernel holds (count above zero).
  size_t referenced() const { return referenced_.load(std::memory_order_relaxed); }
  // FORGETs for more than the (folded) count, or for unknown nodeids.
  uint64_t excess_forgets() const { return excess_.load(std::memory_order_relaxed); }

  // Connects the kernel tier (null: none). Must outlive the table or be reset first.
  void set_tier(TierLookups* tier) {
    std::unique_lock lk(mu_);
    tier_ = tier;
  }

 private:
  struct Slot {
    std::shared_ptr<Node> node;
    uint64_t lookups = 0;
  };

  void excess(uint64_t nodeid, uint64_t n, uint64_t held) {
    if (excess_.fetch_add(1, std::memory_order_relaxed) == 0)
      LOG_WARN("FORGET of %llu lookups of nodeid %llu, which holds %llu: lookup counts out of "
               "step with the kernel (logged once; efuse_forget_excess_total counts them)",
               static_cast<unsigned long long>(n), static_cast<unsigned long long>(nodeid),
               static_cast<unsigned long long>(held));
  }

  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, Slot> slots_;
  std::atomic<uint64_t> next_{2};
  TierLookups* tier_ = nullptr;  // guarded by mu_
  std::atomic<uint64_t> excess_{0};
  std::atomic<size_t> referenced_{0};
};

// The series every backend exports from its node table: efuse_inodes (nodes the kernel
// holds) and efuse_forget_excess_total.
void add_node_metrics(std::vector<Metric>& out, uint64_t referenced, uint64_t excess_forgets);

}  // namespace efuse::fs

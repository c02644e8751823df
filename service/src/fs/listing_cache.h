// What keeps the kernel's cached directory listings exact (FOPEN_CACHE_DIR, no OPENDIR),
// shared by the backends that let the kernel cache listings (passthrough, memory). The
// reasoning, and the one window it leaves, are in fs/passthrough/passthrough_dir.cpp: the
// kernel's own check (the directory's i_version) misses a READDIR reply built before a
// change that reaches the cache after it, so a directory whose entries changed less than
// kListingGraceNs ago has its cached listing dropped at the empty reply that would complete
// the cache.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/clock.h"

namespace efuse::fs {

// A READDIR reply older than this has reached the kernel's listing cache.
inline constexpr int64_t kListingGraceNs = 2'000'000'000;

// The help of efuse_listing_cache_drops_total, which every such backend exports.
inline constexpr const char* kListingDropsHelp =
    "Directory listings the kernel had cached (or was building) "
    "that efused dropped: an entry of the directory changed less "
    "than 2 s before the listing completed, or behind efused's back.";

// Per directory.
struct ListingChanges {
  std::atomic<uint64_t> changed{0};    // changes of this directory's entries
  std::atomic<uint64_t> settled{0};    // `changed` as of the last settling drop
  std::atomic<int64_t> changed_ns{0};  // steady_ns() of the latest change

  // An entry of this directory was created, removed or renamed (call after the change).
  void entries_changed() {
    changed_ns.store(steady_ns());  // before the count: whoever sees it sees the time too
    changed.fetch_add(1);
  }

  // At the empty READDIR reply that completes the kernel's cache of this listing: calls
  // drop() (which drops the cached pages, notify_inval_inode) unless `exact` and every change
  // has settled. A drop settles the changes once the latest is older than grace_ns: every
  // reply built before it has reached the cache by then, and the drop removed it. Without
  // `exact` (changes the backend may not have seen) every completed listing is dropped.
  template <typename Drop>
  void end_of_listing(bool exact, int64_t grace_ns, Drop&& drop) {
    uint64_t now_changed = changed.load();
    if (exact && now_changed == settled.load()) return;
    drop();
    // A change after the load of `now_changed` keeps the directory unsettled: `changed`
    // moved on. One before it stored its time first, so its age is measured here.
    if (exact && steady_ns() - changed_ns.load() > grace_ns) settled.store(now_changed);
  }
};

}  // namespace efuse::fs

// The passthrough backend's counters, exported to /metrics by PassthroughFs::metrics()
// (passthrough_metrics.cpp) under the names docs/metrics.md lists.
#pragma once

#include <cstdint>
#include <vector>

#include "accel/io_path.h"
#include "fs/filesystem.h"

namespace efuse::fs::passthrough {

// What a backend reports to /metrics: the inodes it holds for the kernel and the
// descriptors it keeps for them (efuse_inodes, efuse_inode_fds, efuse_inode_fd_*_total),
// how it keeps the kernel's caches exact (efuse_watch*, efuse_listing_cache_drops_total)
// and how opens were served (efuse_shared_opens_total).
struct BackendStats {
  uint64_t inodes = 0;           // the kernel holds a reference (nlookup > 0)
  uint64_t fds = 0;              // of those, with an open O_PATH descriptor
  uint64_t evictions = 0;        // descriptors closed to stay within the budget
  uint64_t evictor_passes = 0;   // eviction passes run by the table's evictor thread
  uint64_t request_passes = 0;   // ... by a request, past the hard limit
  uint64_t reopens = 0;          // descriptors reopened from a file handle
  uint64_t reopen_failures = 0;  // reopen failed (mostly ESTALE: removed meanwhile)
  uint64_t listing_drops = 0;    // cached directory listings dropped: a change raced them
  uint64_t shared_opens = 0;     // read-only opens that shared the inode's descriptor
  uint64_t watched_dirs = 0;         // backing directories watched for outside changes
  uint64_t watch_fanotify_dirs = 0;  // of those, whose files' writes fanotify reports
  uint64_t watch_muted_files = 0;    // files whose write events are muted while written
  uint64_t watch_events = 0;         // inotify and fanotify events read
  uint64_t watch_invalidations = 0;  // notifications sent for outside changes
  uint64_t watch_overflows = 0;      // event queue overflows
  uint64_t watch_failures = 0;       // watches that could not be set up
};

// The series of `stats` (and of the node table's excess FORGETs) under the passthrough
// backend's metric names.
std::vector<Metric> metrics_of(const BackendStats& stats, uint64_t excess_forgets);

// The io_path auto scheduler's series (efuse_io_path_*): decisions, probes, predictions and
// the current choice of each class of opens.
void add_io_path_metrics(std::vector<Metric>& out, const accel::IoPathReport& report);

}  // namespace efuse::fs::passthrough

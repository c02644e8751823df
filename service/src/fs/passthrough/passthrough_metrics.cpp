// The passthrough backend's series for /metrics (names and meaning: docs/metrics.md).
#include "fs/node_table.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {

std::vector<Metric> PassthroughFs::metrics() const {
  return metrics_of(backend_stats(), inodes_.excess_forgets());
}

std::vector<Metric> metrics_of(const BackendStats& s, uint64_t excess_forgets) {
  std::vector<Metric> out;
  add_node_metrics(out, s.inodes, excess_forgets);
  out.push_back({"efuse_inode_fds",
       "Of those, how many hold an open O_PATH descriptor on the backing "
       "object. Bounded by half of RLIMIT_NOFILE for the whole daemon; "
       "the others are held by file handle.",
                 Metric::Type::Gauge, static_cast<double>(s.fds)});
  out.push_back({"efuse_inode_fd_evictions_total",
       "Inode descriptors closed to stay within the descriptor "
       "budget (least recently used, not open, first).",
                 Metric::Type::Counter, static_cast<double>(s.evictions)});
  out.push_back({"efuse_inode_fd_reopens_total",
       "Evicted inode descriptors reopened from their file handle "
       "(open_by_handle_at) because a request needed them.",
                 Metric::Type::Counter, static_cast<double>(s.reopens)});
  out.push_back({"efuse_inode_fd_reopen_failures_total",
       "Reopens that failed, mostly because the backing "
       "object was removed while evicted (answered ESTALE).",
                 Metric::Type::Counter, static_cast<double>(s.reopen_failures)});
  out.push_back({"efuse_listing_cache_drops_total",
       "Directory listings the kernel had cached (or was building) "
       "that efused dropped: an entry of the directory changed less "
       "than 2 s before the listing completed, or behind efused's back.",
                 Metric::Type::Counter, static_cast<double>(s.listing_drops)});
  out.push_back({"efuse_shared_opens_total",
       "Plain read-only opens of regular files that shared the "
       "inode's own (readable) descriptor instead of opening the "
       "backing file.",
                 Metric::Type::Counter, static_cast<double>(s.shared_opens)});
  out.push_back({"efuse_watched_directories",
       "Backing directories watched (inotify) for changes made behind "
       "efused's back: every directory the kernel knows.",
                 Metric::Type::Gauge, static_cast<double>(s.watched_dirs)});
  out.push_back({"efuse_watch_fanotify_directories",
       "Of the watched directories, those whose files' writes fanotify reports (so that a "
       "file being written through the mount can have its write events muted). The rest "
       "have inotify report every write: fanotify is unavailable or refused them (no file "
       "ids on that file system, fs.fanotify limits; the log says which).",
                 Metric::Type::Gauge, static_cast<double>(s.watch_fanotify_dirs)});
  out.push_back({"efuse_watch_muted_files",
       "Files open for writing through the mount whose write events the kernel drops "
       "(fanotify ignore marks) until their last writable open closes; efused compares "
       "their attributes with the kernel's once a second meanwhile.",
                 Metric::Type::Gauge, static_cast<double>(s.watch_muted_files)});
  out.push_back({"efuse_watch_events_total",
       "inotify and fanotify events read from the backing tree: "
       "changes by anyone, efused's own and writes through "
       "passthrough opens included (repeated ones merged by the "
       "kernel).",
                 Metric::Type::Counter, static_cast<double>(s.watch_events)});
  out.push_back({"efuse_watch_invalidations_total",
       "Invalidations sent to the kernel for changes made "
       "behind efused's back (names, attributes, data). Events "
       "whose change the kernel already sees send none.",
                 Metric::Type::Counter, static_cast<double>(s.watch_invalidations)});
  out.push_back({"efuse_watch_overflows_total",
       "inotify queue overflows: efused no longer knew what "
       "changed and invalidated everything the kernel caches.",
                 Metric::Type::Counter, static_cast<double>(s.watch_overflows)});
  out.push_back({"efuse_watch_failures_total",
       "Watches that could not be set up (inotify_init1 or "
       "inotify_add_watch failed: fs.inotify limits). After one, "
       "the mount's cache timeouts are capped at 1 s.",
                 Metric::Type::Counter, static_cast<double>(s.watch_failures)});
  constexpr const char* kPasses = "efuse_inode_fd_eviction_passes_total";
  constexpr const char* kPassesHelp =
       "Eviction passes over the inode table (each closes "
       "descriptors down to three quarters of the budget), "
       "by who ran them: the mount's evictor thread, or a "
       "request that found the daemon past the hard limit.";
  out.push_back({kPasses, kPassesHelp, Metric::Type::Counter, static_cast<double>(s.evictor_passes),
                 {{"by", "evictor"}}});
  out.push_back({kPasses, kPassesHelp, Metric::Type::Counter, static_cast<double>(s.request_passes),
                 {{"by", "request"}}});
  return out;
}

}  // namespace efuse::fs::passthrough

// The passthrough backend's series for /metrics (names and meaning: docs/metrics.md).
#include "fs/node_table.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs::passthrough {

std::vector<Metric> PassthroughFs::metrics() const {
  std::vector<Metric> out = metrics_of(backend_stats(), inodes_.excess_forgets());
  add_io_path_metrics(out, io_path_report());
  out.push_back({"efuse_device_readahead_streams",
       "Files whose device-path reads are read ahead now (a stream: O_DIRECT reads in flight "
       "ahead of the reader, as deep as the backing device's read_ahead_kb; docs/adaptive-io.md).",
                 Metric::Type::Gauge, static_cast<double>(streams_.load(std::memory_order_relaxed))});
  out.push_back({"efuse_device_readahead_buffer_bytes",
       "Buffers those streams hold (at most 64 MiB per mount; a stream that would exceed it "
       "reads less far ahead, or not at all).",
                 Metric::Type::Gauge,
                 static_cast<double>(stream_bytes_.load(std::memory_order_relaxed))});
  out.push_back({"efuse_device_readahead_chunk_reads_total",
       "O_DIRECT reads of 128 KiB the streams issued ahead of their readers.",
                 Metric::Type::Counter,
                 static_cast<double>(stream_counters_.chunks_read.load(std::memory_order_relaxed))});
  out.push_back({"efuse_device_readahead_chunk_waits_total",
       "Of those, the ones a READ had to wait for (the stream was not far enough ahead).",
                 Metric::Type::Counter,
                 static_cast<double>(stream_counters_.chunks_waited.load(std::memory_order_relaxed))});
  out.push_back({"efuse_intercept_written_files",
       "Backing files that processes under libefuse_intercept.so opened for writing and "
       "that are still open for writing somewhere: the kernel caches none of their "
       "attributes or pages (docs/intercept.md).",
                 Metric::Type::Gauge, static_cast<double>(library_marked())});
  out.push_back({"efuse_intercept_write_refusals_total",
       "Opens for writing by libefuse_intercept.so that efused refused (the file had an open "
       "through the page cache, or 4096 files were being written already): the kernel "
       "served them instead.",
                 Metric::Type::Counter,
                 static_cast<double>(library_refusals_.load(std::memory_order_relaxed))});
  return out;
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
  out.push_back({"efuse_listing_cache_drops_total", kListingDropsHelp,
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

void add_io_path_metrics(std::vector<Metric>& out, const accel::IoPathReport& r) {
  static constexpr const char* kDecisions = "efuse_io_path_decisions_total";
  static constexpr const char* kDecisionsHelp =
      "Opens whose I/O path was decided (the first open of an inode; later opens join its "
      "path until the last is released), by decision (cache: through the page cache and "
      "efused; passthrough: FUSE passthrough) and reason: fixed (io_path cache or "
      "passthrough), unavailable (no passthrough on this mount), setid (writable open of a "
      "set-ID file), and with io_path auto writer (a writable open: passthrough), guess "
      "(nothing measured yet: the 64 KiB rule), "
      "probe (the class is measuring both paths), predicted (the class's cheaper path) or "
      "history (the file's own measured reopens). Decisions kernel (buffered pread) and "
      "device (O_DIRECT through io_uring) are those of the reads efused serves in a cache "
      "epoch, made at its first READ under io_path auto, with reason guess, probe, "
      "predicted or unsupported (the backing file system does no direct I/O).";
  static constexpr const char* kProbes = "efuse_io_path_probes_total";
  static constexpr const char* kProbesHelp =
      "Probes the io_path auto scheduler started per class of opens, by cause: start, "
      "round (the committed round was used up), period (adaptive.reprobe_interval "
      "passed), drift (the committed path's measured cost moved 2x from its prediction, "
      "or it was refused), shift (the sizes of the files opened moved within the class).";
  static constexpr const char* kPredicted = "efuse_io_path_predicted_cost_seconds";
  static constexpr const char* kPredictedHelp =
      "Result of the latest completed probe of a class of opens: the mean cost per open "
      "of each path as efused measures it (cache: served READ and WRITE requests times "
      "20 us of round trip plus efused's time; passthrough: registering and unregistering "
      "the backing file, 20 us times the share of passthrough epochs a later stat refetched "
      "attributes after, plus 2 us for the kernel's backing file open). For the *_device "
      "classes the mean cost per MiB read of the kernel and device paths (efused's time "
      "serving READs). No series for a path not measured or refused.";
  static constexpr const char* kChoice = "efuse_io_path_choice";
  static constexpr const char* kChoiceHelp =
      "1 for the path a class of opens is committed to, 0 for the other; both 0 while "
      "the class probes.";
  static constexpr const char* kEpochs = "efuse_io_path_epochs_measured_total";
  static constexpr const char* kEpochsHelp =
      "Epochs (first open of an inode to its last release) under io_path auto whose cost "
      "(or passthrough refusal) was measured and fed to the scheduler.";
  for (int path = 0; path < 2; ++path) {
    for (size_t reason = 0; reason < r.decisions[path].size(); ++reason) {
      uint64_t n = r.decisions[path][reason];
      if (n == 0) continue;
      out.push_back({kDecisions, kDecisionsHelp, Metric::Type::Counter, static_cast<double>(n),
                     {{"decision", accel::to_string(static_cast<accel::IoPath>(path))},
                      {"reason", accel::to_string(static_cast<accel::IoReason>(reason))}}});
    }
  }
  out.push_back({kEpochs, kEpochsHelp, Metric::Type::Counter,
                 static_cast<double>(r.epochs_measured)});
  for (int path = 0; path < 2; ++path) {
    for (size_t reason = 0; reason < r.device.decisions[path].size(); ++reason) {
      uint64_t n = r.device.decisions[path][reason];
      if (n == 0) continue;
      out.push_back({kDecisions, kDecisionsHelp, Metric::Type::Counter, static_cast<double>(n),
                     {{"decision", accel::to_string(static_cast<accel::DevPath>(path))},
                      {"reason", accel::to_string(static_cast<accel::DevReason>(reason))}}});
    }
  }
  auto add_class = [&](const std::string& klass, const accel::EngineReport& e,
                       std::array<const char*, 2> paths, double scale) {
    for (size_t cause = 0; cause < e.probes.size(); ++cause) {
      out.push_back({kProbes, kProbesHelp, Metric::Type::Counter,
                     static_cast<double>(e.probes[cause]),
                     {{"class", klass},
                      {"cause", accel::to_string(static_cast<accel::ProbeCause>(cause))}}});
    }
    for (int path = 0; path < 2; ++path) {
      if (e.predicted[path] >= 0)
        out.push_back({kPredicted, kPredictedHelp, Metric::Type::Gauge,
                       e.predicted[path] * scale, {{"class", klass}, {"path", paths[path]}}});
      out.push_back({kChoice, kChoiceHelp, Metric::Type::Gauge, e.choice == path ? 1.0 : 0.0,
                     {{"class", klass}, {"path", paths[path]}}});
    }
  };
  for (const accel::IoClassReport& c : r.classes)
    add_class(c.name, c.engine, {accel::to_string(accel::IoPath::Cache),
                                 accel::to_string(accel::IoPath::Passthrough)}, 1e-9);
  // Device classes: cost per MiB, in seconds per MiB.
  for (const auto& [name, e] : r.device.classes)
    add_class(name, e, {accel::to_string(accel::DevPath::Kernel),
                        accel::to_string(accel::DevPath::Device)}, 1e-9);
}

}  // namespace efuse::fs::passthrough

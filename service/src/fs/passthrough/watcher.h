// Watches the backing tree for changes made behind efused's back (inotify on every
// directory the kernel knows) and turns them into exact FUSE invalidations, so long cache
// timeouts stay correct.
//
// Entry changes efused makes itself are noted beforehand and not echoed. Attribute and
// data events are not matched to our own operations at all: each is checked against what
// the kernel holds (Inode::kernel_attrs). If the file's attributes still equal the ones
// efused last replied with, the kernel's view is current (a change of ours, already
// replied); if the kernel holds none (invalidated, not asked for since), there is nothing
// stale to drop. So a file written continuously through a passthrough open costs one
// invalidation until someone stats it again, not one per write or per batch, and an outside
// change is never mistaken for ours (inotify merges identical queued events, which made
// counting our own changes lose outside ones).
//
// Events are read in batches every few milliseconds; a file named in many events of one
// batch is looked at once.
#pragma once

#include <sys/inotify.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "fs/filesystem.h"
#include "fs/passthrough/inode_table.h"

namespace efuse::fs::passthrough {

class Watcher {
 public:
  // What the watchers of one mount did, kept by the mount across watchers (/metrics:
  // efuse_watch_*).
  struct Counters {
    std::atomic<uint64_t> events{0};         // inotify events read
    std::atomic<uint64_t> invalidations{0};  // notifications sent for outside changes
    std::atomic<uint64_t> overflows{0};      // event queue overflows (everything invalidated)
    std::atomic<uint64_t> failures{0};       // inotify_init1 / inotify_add_watch failures
  };

  Watcher(InodeTable& table, Invalidator& inv, Counters& counters, const std::string& label);
  ~Watcher();  // stops and joins the event thread
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  void watch(Inode& dir);
  void unwatch(Inode& dir);
  // Entry changes efused is about to make itself: the next matching event is not echoed.
  void note_entry(uint64_t dir, std::string_view name, int events = 1);

  // Whether every directory the kernel knows is watched (no watch ever failed).
  bool exact() const { return watch_failures_.load() == 0; }
  size_t watched() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Batch;
  void run();
  void handle(const struct inotify_event& ev, Batch& batch);
  void check(Inode& inode, const struct stat& st, uint32_t mask, Batch& batch);
  void resolve(Batch& batch);
  bool consume_entry(uint64_t dir, std::string_view name);
  void expire_notes();
  void resync(Batch& batch);
  void failed();

  InodeTable& table_;
  Invalidator& inv_;
  Counters& counters_;
  std::string label_;
  int fd_ = -1;
  int stop_fd_ = -1;
  std::thread thread_;

  mutable std::mutex mu_;
  std::unordered_map<int, uint64_t> dirs_;  // watch descriptor -> directory nodeid
  std::map<std::pair<uint64_t, std::string>, std::pair<int, Clock::time_point>> self_entries_;
  Clock::time_point last_expiry_{};  // event thread only
  uint64_t overflows_seen_ = 0;       // event thread only

  std::atomic<uint64_t> watch_failures_{0};  // this watcher's: timeouts are capped once > 0
};

}  // namespace efuse::fs::passthrough

// Watches the backing tree for changes made behind efused's back (inotify on every
// directory the kernel knows, fanotify for their files' writes) and turns them into exact
// FUSE invalidations, so long cache timeouts stay correct.
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
// Writes: inotify queues an event, with the file's name, for every write to a file of a
// watched directory, writes through a passthrough open included; that is most of what a
// 4 KiB write costs over native. Where fanotify can mark a directory (file ids on its file
// system, Linux 5.9, a free mark), its writes are reported by fanotify instead (merged per
// file in the kernel's queue) and the inotify watch leaves IN_MODIFY out. Once a file open
// for writing through the mount shows write events, the kernel is told to drop them
// altogether (an ignore mark: the writes cost nothing extra), and efused compares the
// file's attributes with the kernel's once a second instead, until its last writable open
// closes; then its events come again and it is looked at once more. So an outside write to
// a file that is also open for writing through the mount shows within about a second.
// Elsewhere IN_MODIFY stays in the inotify watch.
//
// Events are read in batches every few milliseconds; a file named in many events of one
// batch is looked at once.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fs/filesystem.h"
#include "fs/passthrough/inode_table.h"

namespace efuse::fs::passthrough {

class Watcher {
 public:
  // What the watchers of one mount did, kept by the mount across watchers (/metrics:
  // efuse_watch_*).
  struct Counters {
    std::atomic<uint64_t> events{0};         // inotify and fanotify events read
    std::atomic<uint64_t> invalidations{0};  // notifications sent for outside changes
    std::atomic<uint64_t> overflows{0};      // event queue overflows (everything invalidated)
    std::atomic<uint64_t> failures{0};       // inotify_init1 / inotify_add_watch failures
  };

  Watcher(InodeTable& table, Invalidator& inv, Counters& counters, const std::string& label);
  ~Watcher();  // stops and joins the event thread
  // Stops the event thread: nothing is invalidated after this returns. The watches and
  // marks go with the watcher.
  void stop();
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  void watch(Inode& dir);
  void unwatch(Inode& dir);
  // Entry changes efused is about to make itself: the next matching event is not echoed.
  void note_entry(uint64_t dir, std::string_view name, int events = 1);
  // The last writable open of `file` through the mount closed (Inode::writers fell to 0).
  // If its write events were muted they are heard again, and the file is looked at once.
  void closed(Inode& file);

  // Whether every directory the kernel knows is watched (no watch ever failed).
  bool exact() const { return watch_failures_.load() == 0; }
  size_t watched() const;
  size_t watched_by_fanotify() const;  // directories whose writes fanotify reports
  size_t muted() const;                // files whose write events are muted

 private:
  using Clock = std::chrono::steady_clock;
  struct Batch;
  void run();
  void read_inotify(Batch& batch);
  void read_fanotify(Batch& batch);
  void handle(uint64_t dir, std::string_view name, uint32_t mask, Batch& batch);
  bool mark(Inode& dir, const PathFd& fd);
  void mute(const std::shared_ptr<Inode>& file);
  void unmute(uint64_t nodeid, Batch& batch);
  void wake();
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
  int fd_ = -1;       // inotify
  int fan_fd_ = -1;   // fanotify (writes), -1 where it cannot be had
  int wake_fd_ = -1;  // eventfd: stop, or files closed
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  mutable std::mutex mu_;
  std::unordered_map<int, uint64_t> dirs_;  // watch descriptor -> directory nodeid
  // fanotify marks: file system id and file handle of a directory <-> its nodeid.
  std::unordered_map<std::string, uint64_t> fids_;
  std::unordered_map<uint64_t, std::string> fid_of_;
  std::unordered_map<uint64_t, std::shared_ptr<Inode>> muted_;  // ignore mark for writes
  std::vector<uint64_t> closed_;            // files whose last writable open closed
  bool fan_refused_logged_ = false;
  std::map<std::pair<uint64_t, std::string>, std::pair<int, Clock::time_point>> self_entries_;
  uint64_t overflows_seen_ = 0;       // event thread only

  std::atomic<uint64_t> watch_failures_{0};  // this watcher's: timeouts are capped once > 0
};

}  // namespace efuse::fs::passthrough

// Watches the backing tree for changes made behind efused's back (inotify on every
// directory the kernel knows) and turns them into exact FUSE invalidations, so long cache
// timeouts stay correct. Changes efused makes itself are noted beforehand and not echoed.
//
// Events are read in batches every few milliseconds, so a file written continuously costs
// one invalidation per batch, not one per write.
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
  Watcher(InodeTable& table, Invalidator& inv, const std::string& label);
  ~Watcher();  // stops and joins the event thread
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  void watch(Inode& dir);
  void unwatch(Inode& dir);
  // Changes efused is about to make itself: the next matching event is not echoed.
  void note_entry(uint64_t dir, std::string_view name, int events = 1);
  void note_inode(const Inode& inode);

  uint64_t invalidations() const { return invalidations_.load(); }
  uint64_t overflows() const { return overflows_.load(); }
  uint64_t watch_failures() const { return watch_failures_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Batch;
  void run();
  void handle(const struct inotify_event& ev, Batch& batch);
  bool consume_entry(uint64_t dir, std::string_view name);
  bool consume_inode(uint64_t nodeid);
  void expire_notes();
  void resync(Batch& batch);

  InodeTable& table_;
  Invalidator& inv_;
  std::string label_;
  int fd_ = -1;
  int stop_fd_ = -1;
  std::thread thread_;

  std::mutex mu_;
  std::unordered_map<int, uint64_t> dirs_;  // watch descriptor -> directory nodeid
  std::map<std::pair<uint64_t, std::string>, std::pair<int, Clock::time_point>> self_entries_;
  std::unordered_map<uint64_t, Clock::time_point> self_inodes_;
  Clock::time_point last_expiry_{};  // event thread only

  std::atomic<uint64_t> invalidations_{0};
  std::atomic<uint64_t> overflows_{0};
  std::atomic<uint64_t> watch_failures_{0};
};

}  // namespace efuse::fs::passthrough

// The device path's reads (accel/device.h): O_DIRECT through io_uring, straight from the
// backing device into efused's buffer.
#pragma once

#include <liburing.h>

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "common/result.h"

namespace efuse::fs::passthrough {

// The direct I/O alignment of fd's file (statx STATX_DIOALIGN): the larger of the memory
// and file offset alignments, or 0 when the file system does no direct I/O (tmpfs reports
// none: since Linux 6.6 it accepts O_DIRECT without bypassing any cache).
uint32_t direct_io_alignment(int fd);

// Reads up to buf.size() bytes at `off` from `fd` (opened O_DIRECT) through this thread's
// io_uring ring (made at its first use; a thread whose ring cannot be set up reads with
// preadv2). `align` is direct_io_alignment(). An unaligned offset, length or buffer goes
// through an aligned bounce buffer of the thread's: the aligned range around it is read
// and the part asked for copied. Short only at end of file; fails with the read's errno.
Result<size_t> direct_read(int fd, std::span<char> buf, uint64_t off, uint32_t align);

// The read-ahead depth of the block device behind `dev` (its queue's read_ahead_kb: what the
// kernel reads ahead of a buffered sequential reader of that device), or 0 when there is
// no such device (a file system without one, sysfs not mounted).
size_t device_readahead_bytes(dev_t dev);

// Counts of a mount's streams (DirectStream), for /metrics.
struct StreamCounters {
  std::atomic<uint64_t> chunks_read{0};    // chunk reads issued
  std::atomic<uint64_t> chunks_waited{0};  // chunks a read had to wait for (not ahead enough)
};

// Readahead for the device path: one sequential reader of one O_DIRECT file that keeps up
// to window() reads of kChunk bytes in flight ahead of the reads it serves (ramping up to
// that from kMinWindow while the reader stays sequential, back to it when it jumps), on an io_uring
// ring of its own, so that the device works on the next chunks while efused answers the
// current one (one synchronous O_DIRECT read per FUSE READ leaves the device idle between
// requests and loses to the backing file's buffered readahead). Reads it serves are
// copied out of its chunks; a read outside the window (not sequential) moves the window to
// it. Data read ahead is a snapshot of the file when it was read: whoever changes the
// file through efused calls drop() (writes, truncation). Thread-safe: the threads serving
// one stream take turns (one mutex).
class DirectStream {
 public:
  static constexpr size_t kChunk = 128 * 1024;
  static constexpr unsigned kMinWindow = 2;
  static constexpr unsigned kMaxWindow = 256;

  // A stream of `fd` (O_DIRECT) with the file system's `align` (direct_io_alignment()) that
  // keeps `depth` bytes read ahead (rounded to chunks, kMinWindow..kMaxWindow of them); null
  // (*err says why) when its ring or buffers cannot be set up. `counters` (may be null) are
  // bumped with the stream's own stats().
  static std::unique_ptr<DirectStream> create(int fd, uint32_t align, size_t depth, int* err,
                                              StreamCounters* counters = nullptr);
  ~DirectStream();  // waits for the reads in flight (they write into its buffers)
  DirectStream(const DirectStream&) = delete;
  DirectStream& operator=(const DirectStream&) = delete;

  // Chunks in the window: what create() made of `depth`.
  static unsigned window_for(size_t depth);
  unsigned window() const { return window_; }
  // Bytes of its buffers: what create() made of `depth`.
  size_t buffer_bytes() const { return size_t{window_} * kChunk; }

  // Up to buf.size() bytes at `off`, short only at end of file, as direct_read().
  Result<size_t> read(std::span<char> buf, uint64_t off);
  // Forgets what was read ahead (the file changed).
  void drop();

  struct Stats {
    uint64_t chunks_read = 0;    // chunk reads issued
    uint64_t chunks_waited = 0;  // chunks a read had to wait for (not ahead enough)
  };
  Stats stats() const;

 private:
  struct Slot {
    uint64_t chunk = UINT64_MAX;  // chunk index (offset / kChunk); UINT64_MAX: empty
    bool in_flight = false;
    int res = 0;  // bytes read, or -errno, once done
    char* data = nullptr;
  };
  DirectStream(int fd, uint32_t align, unsigned window, StreamCounters* counters)
      : fd_(fd), align_(align), window_(window), counters_(counters) {}
  Slot* find(uint64_t chunk);
  Slot* issue(uint64_t chunk);  // null: no slot free (all in flight or in the window)
  int wait_for(Slot& s);        // reaps completions until `s` is done; -errno on ring failure
  void reap_all();
  void fill_ahead();

  mutable std::mutex mu_;
  const int fd_;
  const uint32_t align_;
  const unsigned window_;
  StreamCounters* const counters_;
  struct io_uring ring_ {};
  bool ring_ok_ = false;
  std::vector<Slot> slots_;
  char* buffers_ = nullptr;
  unsigned in_flight_ = 0;
  uint64_t base_ = 0;  // the chunk the latest read wanted: the window is [base_, base_ + window_)
  unsigned ahead_ = kMinWindow;  // of the window, the chunks kept in flight now (the ramp)
  uint64_t chunks_read_ = 0;
  uint64_t chunks_waited_ = 0;
  uint64_t eof_chunk_ = UINT64_MAX;  // the first chunk found short (end of file)
};

}  // namespace efuse::fs::passthrough

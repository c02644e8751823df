// Cache or passthrough, per file, decided at open (docs/adaptive-io.md).
//
// The kernel does a file's I/O either through its FUSE page cache (efused serves every READ
// and WRITE the cache misses) or with FUSE passthrough (the kernel reads and writes the
// backing file itself), and will not mix the two on one inode while it is open: the first
// open of an inode decides for all opens until the last is released (an "epoch"). This
// policy makes that decision with an Engine per class of opens, classes being
// (file size: small <= 64 KiB < medium <= 8 MiB < large) x (cold: the file's previous
// epoch, if any, was passthrough; warm: it was cache, so its pages may still be cached),
// for read-only opens. A writable open uses passthrough without asking an engine: through
// the cache every write would be an upcall (no writeback cache with passthrough), so the
// cache cannot win, and probing it would push a writer's whole epoch through efused.
// What an epoch cost, per open:
//
//   cache       = (READ + WRITE requests served x kUpcallNs + their time in efused) / opens
//   passthrough = (time efused spent registering and unregistering the backing file
//                 (FUSE_DEV_IOC_BACKING_OPEN, _CLOSE) + attr_refetch_ratio() x kUpcallNs)
//                 / opens + kBackingFileNs (the kernel's own backing file open and
//                 release, per open, which efused cannot see). Passthrough reads invalidate
//                 the kernel's cached atime, so the file's next stat is a GETATTR upcall;
//                 the ratio is how often one followed a passthrough epoch on this mount.
//
// Page-cache hits cost nothing on the cache path: a warm file read again costs nothing, a
// cold one a request per max_write. Committed, a class lets a file's own history decide:
// a cold file opened n times before takes the cache when its fetch cost spread over n + 1
// opens is below passthrough's cost (rent until buying is cheaper: the ski-rental rule),
// unless its own warm reopens showed that its pages do not stay; a warm file whose own
// warm reopens cost more than passthrough goes back to passthrough.
// Today's fixed rule (read-only opens of files up to 64 KiB use the page cache) is the
// engines' starting guess.
//
// Thread-safe. The per-file state (FileIo) is the caller's, kept with its inode and
// guarded by the caller's per-inode lock, except the counters marked atomic.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "accel/device.h"
#include "accel/engine.h"

namespace efuse::accel {

enum class IoPath : uint8_t { Cache = 0, Passthrough = 1 };  // the engine's path numbers
const char* to_string(IoPath p);

// The mount's configured io_path.
enum class IoMode : uint8_t { Auto, Passthrough, Cache };

// Why an open got its path (label `reason` of efuse_io_path_decisions_total).
enum class IoReason : uint8_t {
  Fixed,        // io_path cache or passthrough
  Unavailable,  // the kernel did not grant passthrough (or writeback cache is on)
  Setid,        // writable open of a set-ID file: served, so each WRITE clears the bits
  Writer,       // auto, a writable open: passthrough (see above)
  KernelOpen,   // auto, a read-only open on the kernel module tier, whose OPEN handler
                // answers later opens of a passthrough file without efused: passthrough
  Guess,        // auto, nothing measured yet for its class: the starting guess
  Probe,        // auto, its class is probing
  Predicted,    // auto, its class's prediction
  History,      // auto, the file's own measured epochs
  kCount
};
const char* to_string(IoReason r);

// One file's I/O measurements (kept with the inode while the kernel knows it).
struct FileIo {
  // The running epoch (guarded by the caller's per-inode lock).
  IoPath path = IoPath::Cache;
  bool auto_decided = false;  // the epoch's path came from an engine (measure it)
  bool probe = false;         // the epoch is a probe of its class (reason Probe)
  bool warm = false;          // the previous epoch was cache
  uint8_t klass = 0;
  uint32_t opens = 0;
  // Served by efused during the epoch (atomic: READ and WRITE do not take the inode lock).
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> service_ns{0};
  std::atomic<uint64_t> backing_ns{0};
  std::atomic<bool> refused{false};
  // A passthrough epoch ended and the kernel has not asked for the file's attributes
  // since: its passthrough reads invalidated the cached atime, so the next stat costs a
  // GETATTR upcall (attr_fetched()). Cleared at the end of the next epoch.
  std::atomic<bool> attr_due{false};
  // History (guarded by the caller's per-inode lock): running means of the cost per open
  // (ns) of its cold cache epochs (the fetch), warm cache epochs and passthrough epochs.
  uint32_t epochs = 0;  // epochs ended
  IoPath last = IoPath::Passthrough;
  struct Mean {
    uint32_t n = 0;
    double mean = 0;
    void add(double v);
  };
  Mean cold_cache, warm_cache, passthrough;
};

// What the open is about (filled by the backend).
struct OpenFacts {
  off_t size = 0;
  bool writable = false;
  bool setid_write = false;            // writable open of a set-ID file
  bool passthrough_available = false;  // the kernel granted passthrough for this mount
  bool kernel_opens = false;           // efuse.ko's handlers answer this mount's opens
};

struct IoClassReport {
  std::string name;  // e.g. "small_warm_read"
  EngineReport engine;
};

struct IoPathReport {
  // decisions[path][reason]
  std::array<std::array<uint64_t, static_cast<size_t>(IoReason::kCount)>, 2> decisions{};
  std::vector<IoClassReport> classes;  // only classes that made a decision
  uint64_t epochs_measured = 0;
  DeviceReport device;  // device or kernel for the reads efused serves (accel/device.h)
};

class IoPathPolicy {
 public:
  IoPathPolicy();

  void set_mode(IoMode m);
  void set_settings(const Settings& s);

  // The first open of an epoch (no other open of the inode): chooses its path and starts
  // the epoch in `file`. Later opens of the same epoch call joined().
  IoPath open(FileIo& file, const OpenFacts& facts, int64_t now_ns);
  void joined(FileIo& file) { ++file.opens; }
  // A READ or WRITE served by efused for the file (cache path), `ns` in efused.
  static void served(FileIo& file, uint64_t ns) {
    file.requests.fetch_add(1, std::memory_order_relaxed);
    file.service_ns.fetch_add(ns, std::memory_order_relaxed);
  }
  // The backing file of a passthrough open was registered with the kernel, or its id
  // closed, in `ns`.
  static void registered(FileIo& file, uint64_t ns) {
    file.backing_ns.fetch_add(ns, std::memory_order_relaxed);
  }
  // The kernel refused the passthrough backing file (its I/O is served by efused).
  static void refused(FileIo& file) { file.refused.store(true, std::memory_order_relaxed); }
  // The epoch's last open was released: its cost becomes a measurement.
  void closed(FileIo& file, int64_t now_ns);
  // efused served a GETATTR of the file: if a passthrough epoch of it ended since its
  // attributes were last asked for, the kernel is refetching what passthrough invalidated.
  void attr_fetched(FileIo& file) {
    if (file.attr_due.load(std::memory_order_relaxed) &&
        file.attr_due.exchange(false, std::memory_order_relaxed))
      attr_refetches_.fetch_add(1, std::memory_order_relaxed);
  }
  // GETATTRs that followed passthrough epochs, per passthrough epoch (0..1; 0 before any).
  double attr_refetch_ratio() const;

  IoPathReport report() const;

  // What one upcall costs beyond efused's own time: the kernel/user round trip (two
  // context switches and the copies), ~14-21 us on the machines measured (bench: wait floor).
  static constexpr double kUpcallNs = 20'000;
  // What one passthrough open costs the kernel beyond a page-cache open, in the opening
  // process: it opens its own backing file (backing_file_open) and drops it at the release.
  // Measured here as the client's CPU time (perf stat task-clock) of open-read-close loops
  // over 16 KiB files, passthrough against warm page cache: 1.8-2.2 us per open on 6.18.
  // Without it the model saw only efused's ~2 us of ioctls and kept hot small files on
  // passthrough twice as long as their reopens paid for (docs/adaptive-io.md).
  static constexpr double kBackingFileNs = 2'000;
  static constexpr off_t kSmall = 64 * 1024;
  static constexpr off_t kMedium = 8 * 1024 * 1024;
  static constexpr int kClasses = 3 * 2;
  static std::string class_name(int klass);

 private:
  static int class_of(const OpenFacts& facts, bool warm);
  // The file's own history against the class's predictions; false if it cannot tell.
  static bool by_history(const FileIo& f, const Engine& e, IoPath* path);
  // Where the file's size lies in its size class, 0..1 (log scale): the workload feature
  // whose shift makes the class probe again.
  static double size_feature(off_t size);

  mutable std::mutex mu_;
  IoMode mode_ = IoMode::Auto;
  std::array<Engine, kClasses> engines_;
  std::array<bool, kClasses> used_{};
  std::array<std::array<uint64_t, static_cast<size_t>(IoReason::kCount)>, 2> decisions_{};
  uint64_t epochs_measured_ = 0;
  std::atomic<uint64_t> passthrough_epochs_{0};
  std::atomic<uint64_t> attr_refetches_{0};
};

}  // namespace efuse::accel

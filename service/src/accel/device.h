// Device or kernel, per file, for the I/O efused serves itself (docs/adaptive-io.md,
// "Device or kernel path").
//
// A file on the cache path (or any open the kernel did not give passthrough) has its READs
// served by efused. The kernel path reads the backing file buffered (pread through the
// backing file's page cache: fast when its pages are there, but data the FUSE page cache
// holds is then cached twice); the device path reads it with O_DIRECT through io_uring,
// straight from storage into efused's buffer (no second copy in memory, but every read goes
// to the device). An Engine per class of files chooses, from what each path's reads cost
// efused per MiB served, for the whole cache epoch of a file (its first open to its last
// release):
//
//   cost = efused's time serving the epoch's READs x 2^20 / bytes served   (ns per MiB)
//
// Classes by file size: small (<= 8 MiB: re-read files whose backing pages are likely hot)
// and large (streams). The starting guess is the kernel path, what efused did before.
// The device path needs a backing file system that does direct I/O: where statx reports
// no direct I/O alignment (tmpfs, which since Linux 6.6 accepts O_DIRECT without bypassing
// anything) or the O_DIRECT open fails (EINVAL), the kernel path serves (reason
// `unsupported`) and the file system is not asked again.
//
// Thread-safe. The per-file state (FileDevice) is the caller's, kept with its inode and
// guarded by the caller's per-inode lock, except the counters marked atomic.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "accel/engine.h"

namespace efuse::accel {

enum class DevPath : uint8_t { Kernel = 0, Device = 1 };  // the engine's path numbers
const char* to_string(DevPath p);

// Why a cache epoch got its path (label `reason` of efuse_io_path_decisions_total with
// decision kernel or device).
enum class DevReason : uint8_t {
  Guess,        // nothing measured yet for its class: the kernel path
  Probe,        // its class is probing
  Predicted,    // its class's prediction
  Unsupported,  // the backing file system does no direct I/O (or refused the open)
  kCount
};
const char* to_string(DevReason r);

// One file's device-path state for its running cache epoch.
struct FileDevice {
  DevPath path = DevPath::Kernel;
  bool decided = false;  // the epoch's path came from an engine (measure it)
  uint8_t klass = 0;
  DevReason reason = DevReason::Guess;
  // Served by efused during the epoch (atomic: READs do not take the inode lock).
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> service_ns{0};
};

struct DeviceReport {
  std::array<std::array<uint64_t, static_cast<size_t>(DevReason::kCount)>, 2> decisions{};
  std::vector<std::pair<std::string, EngineReport>> classes;  // only classes that decided
};

class DevicePolicy {
 public:
  DevicePolicy();
  void set_settings(const Settings& s);

  // The first open of a cache epoch: chooses its path. `direct` = the backing file system
  // does direct I/O (DIO alignment reported). The caller opens the O_DIRECT descriptor for
  // DevPath::Device and calls refused() if that fails. `may_probe` false: the epoch is itself
  // a probe of the cache path (accel/io_path.h), so it takes the class's committed path, or
  // the kernel path before the first commit (Engine::held), never a probe: one probe per
  // epoch, not a cache probe on a device probe, which would cost the two together.
  DevPath open(FileDevice& file, off_t size, bool direct, int64_t now_ns, bool may_probe = true);
  // The O_DIRECT open of a device epoch failed: the engine learns the path is refused and
  // the epoch goes on the kernel path (counted as `unsupported`).
  void refused(FileDevice& file, int64_t now_ns);
  // A READ efused served for the file: `bytes` in `ns`.
  static void served(FileDevice& file, uint64_t bytes, uint64_t ns) {
    file.bytes.fetch_add(bytes, std::memory_order_relaxed);
    file.service_ns.fetch_add(ns, std::memory_order_relaxed);
  }
  // The epoch ended: its cost per MiB becomes a measurement (none if nothing was read).
  void closed(FileDevice& file, int64_t now_ns);

  DeviceReport report() const;
  static std::string class_name(int klass);

  static constexpr off_t kSmall = 8 * 1024 * 1024;
  static constexpr int kClasses = 2;
  // Epochs that read less than a page are not measured (a read past the end of the file,
  // a probe of its size): their decision is dropped.
  static constexpr uint64_t kMinBytes = 4096;
  // Differences below this (ns per MiB) are noise for drift detection.
  static constexpr double kNoiseFloor = 50'000;

 private:
  mutable std::mutex mu_;
  std::array<Engine, kClasses> engines_;
  std::array<bool, kClasses> used_{};
  DeviceReport counts_;
};

}  // namespace efuse::accel

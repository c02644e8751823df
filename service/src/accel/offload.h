// Queue balancing: a request that may block (FSYNC, FSYNCDIR, FALLOCATE, a CREATE that
// truncates, a SETATTR that changes the size) is served inline, on the thread that read it,
// or handed to the mount's offload pool (fuse/offload_pool.h), whichever costs less time,
// decided by an Engine per opcode (docs/adaptive-io.md, "Blocking requests"):
//
//   cost inline  = the request's service time (everything queued behind it on that io_uring
//                  queue or /dev/fuse worker waits that long)
//   cost offload = the time from the handover until a pool thread starts it (the delay the
//                  request itself takes for not holding up the others)
//
// fsync on fast or idle storage takes microseconds and stays inline; on slow storage it
// takes milliseconds and moves off the queue, so stats and reads queued behind it on the
// same CPU are not held up. The first guess is offload for the kinds that wait for storage
// (fsync, fsyncdir, fallocate: a handover to a waiting pool thread costs microseconds, a
// flush at least a device round trip) and inline for the others. Thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "accel/engine.h"

namespace efuse::accel {

enum class Blocking : uint8_t { Fsync, Fsyncdir, Fallocate, Create, Setattr, kCount };
const char* to_string(Blocking b);

enum class Serve : uint8_t { Inline = 0, Offload = 1 };
const char* to_string(Serve s);

struct OffloadReport {
  // served[kind][path][pick]: decisions by opcode, path and the engine's reason
  std::array<std::array<std::array<uint64_t, 3>, 2>, static_cast<std::size_t>(Blocking::kCount)> served{};
  std::array<EngineReport, static_cast<std::size_t>(Blocking::kCount)> engines{};
};

class OffloadPolicy {
 public:
  OffloadPolicy();
  void set_settings(const Settings& s);
  // How to serve the next request of `kind`.
  Choice choose(Blocking kind, int64_t now_ns);
  // It cost `ns` served that way (see above).
  void measured(Blocking kind, Serve path, uint64_t ns, int64_t now_ns);
  // A request chosen for `path` could not take it (the pool was full): nothing to measure.
  void dropped(Blocking kind, Serve path);
  OffloadReport report() const;

  // The way tried first, before anything was measured.
  static Serve guess(Blocking kind);

  // Differences below this are noise: a pool handover costs 5-40 us here, loaded.
  static constexpr double kNoiseFloorNs = 20'000;

 private:
  mutable std::mutex mu_;
  std::array<Engine, static_cast<std::size_t>(Blocking::kCount)> engines_;
  OffloadReport counts_;
};

}  // namespace efuse::accel

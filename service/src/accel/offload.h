// Queue balancing: a request that may block (FSYNC, FSYNCDIR) is served inline, on the
// thread that read it, or handed to a thread of its own, whichever holds that thread (an
// io_uring queue of one CPU, or a /dev/fuse worker) for less time, decided by an Engine per
// opcode (docs/adaptive-io.md, "Blocking requests"):
//
//   cost inline  = the request's service time (everything queued behind it waits that long)
//   cost offload = the time the serving thread spent handing it over (starting the thread)
//
// fsync on fast or idle storage takes microseconds and stays inline; on slow storage it
// takes milliseconds and moves off the queue, so stats and reads queued behind it on the
// same CPU are not held up. Thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "accel/engine.h"

namespace efuse::accel {

enum class Blocking : uint8_t { Fsync, Fsyncdir, kCount };
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
  // It held its serving thread for `ns`.
  void measured(Blocking kind, Serve path, uint64_t ns, int64_t now_ns);
  OffloadReport report() const;

  // Differences below this are noise: a thread start costs 20-60 us here.
  static constexpr double kNoiseFloorNs = 20'000;

 private:
  mutable std::mutex mu_;
  std::array<Engine, static_cast<std::size_t>(Blocking::kCount)> engines_;
  OffloadReport counts_;
};

}  // namespace efuse::accel

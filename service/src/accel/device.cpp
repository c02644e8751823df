#include "accel/device.h"

namespace efuse::accel {

const char* to_string(DevPath p) { return p == DevPath::Kernel ? "kernel" : "device"; }

const char* to_string(DevReason r) {
  switch (r) {
    case DevReason::Guess: return "guess";
    case DevReason::Probe: return "probe";
    case DevReason::Predicted: return "predicted";
    case DevReason::Unsupported: return "unsupported";
    case DevReason::kCount: break;
  }
  return "?";
}

// Within the engine's margin the large class takes the device path: a large file read
// once through the kernel path leaves a second copy of it in the backing page cache (the
// FUSE page cache above holds the first), which no cost here counts. The small class takes
// the kernel path on a tie: its files are re-read, and the backing page cache serves a
// re-read the FUSE page cache no longer holds.
DevicePolicy::DevicePolicy()
    : engines_{Engine(kNoiseFloor, static_cast<int>(DevPath::Kernel)),
               Engine(kNoiseFloor, static_cast<int>(DevPath::Device))} {}

void DevicePolicy::set_settings(const Settings& s) {
  std::lock_guard lk(mu_);
  for (Engine& e : engines_) e.set_settings(s);
}

std::string DevicePolicy::class_name(int klass) {
  return klass == 0 ? "small_device" : "large_device";
}

DevPath DevicePolicy::open(FileDevice& f, off_t size, bool direct, int64_t now_ns,
                           bool may_probe) {
  f.bytes.store(0, std::memory_order_relaxed);
  f.service_ns.store(0, std::memory_order_relaxed);
  f.decided = false;
  f.path = DevPath::Kernel;
  std::lock_guard lk(mu_);
  if (!direct) {
    ++counts_.decisions[0][static_cast<size_t>(DevReason::Unsupported)];
    return f.path;
  }
  const int k = size <= kSmall ? 0 : 1;
  used_[k] = true;
  f.klass = static_cast<uint8_t>(k);
  Choice c;
  if (may_probe) {
    c = engines_[k].choose(now_ns, static_cast<int>(DevPath::Kernel), 0);
  } else {
    bool predicted = false;
    c.path = engines_[k].held(static_cast<int>(DevPath::Kernel), &predicted);
    c.pick = predicted ? Pick::Predicted : Pick::Guess;
  }
  f.path = static_cast<DevPath>(c.path);
  f.decided = true;
  DevReason why = c.pick == Pick::Guess   ? DevReason::Guess
                  : c.pick == Pick::Probe ? DevReason::Probe
                                          : DevReason::Predicted;
  f.reason = why;
  ++counts_.decisions[c.path][static_cast<size_t>(why)];
  return f.path;
}

void DevicePolicy::refused(FileDevice& f, int64_t now_ns) {
  std::lock_guard lk(mu_);
  if (f.decided && f.path == DevPath::Device) {
    engines_[f.klass].failed(static_cast<int>(DevPath::Device), now_ns);
    // Counted as the kernel path it ends on, not as the device decision it was.
    --counts_.decisions[1][static_cast<size_t>(f.reason)];
  }
  ++counts_.decisions[0][static_cast<size_t>(DevReason::Unsupported)];
  f.decided = false;
  f.path = DevPath::Kernel;
}

void DevicePolicy::closed(FileDevice& f, int64_t now_ns) {
  if (!f.decided) return;
  f.decided = false;
  const uint64_t bytes = f.bytes.load(std::memory_order_relaxed);
  std::lock_guard lk(mu_);
  Engine& e = engines_[f.klass];
  if (bytes < kMinBytes) {
    e.dropped(static_cast<int>(f.path));
    return;
  }
  const double per_mib = static_cast<double>(f.service_ns.load(std::memory_order_relaxed)) *
                         static_cast<double>(1 << 20) / static_cast<double>(bytes);
  e.measured(static_cast<int>(f.path), per_mib, now_ns);
}

DeviceReport DevicePolicy::report() const {
  std::lock_guard lk(mu_);
  DeviceReport r;
  r.decisions = counts_.decisions;
  for (int k = 0; k < kClasses; ++k)
    if (used_[k]) r.classes.emplace_back(class_name(k), engines_[k].report());
  return r;
}

}  // namespace efuse::accel

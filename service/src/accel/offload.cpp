#include "accel/offload.h"

namespace efuse::accel {

const char* to_string(Blocking b) {
  switch (b) {
    case Blocking::Fsync: return "fsync";
    case Blocking::Fsyncdir: return "fsyncdir";
    case Blocking::Fallocate: return "fallocate";
    case Blocking::Create: return "create";
    case Blocking::Setattr: return "setattr";
    case Blocking::kCount: break;
  }
  return "?";
}

const char* to_string(Serve s) { return s == Serve::Inline ? "inline" : "offload"; }

OffloadPolicy::OffloadPolicy() { engines_.fill(Engine(kNoiseFloorNs)); }

void OffloadPolicy::set_settings(const Settings& s) {
  std::lock_guard lk(mu_);
  for (Engine& e : engines_) e.set_settings(s);
}

Serve OffloadPolicy::guess(Blocking kind) {
  switch (kind) {
    case Blocking::Fsync:
    case Blocking::Fsyncdir:
    case Blocking::Fallocate:
      return Serve::Offload;  // waits for storage: at least a device round trip
    default:
      return Serve::Inline;   // usually metadata work of microseconds
  }
}

Choice OffloadPolicy::choose(Blocking kind, int64_t now_ns) {
  std::lock_guard lk(mu_);
  // No workload feature: the engine re-probes on drift, rounds and its period.
  Choice c = engines_[static_cast<size_t>(kind)].choose(now_ns, static_cast<int>(guess(kind)), 0);
  ++counts_.served[static_cast<size_t>(kind)][c.path][static_cast<size_t>(c.pick)];
  return c;
}

void OffloadPolicy::measured(Blocking kind, Serve path, uint64_t ns, int64_t now_ns) {
  std::lock_guard lk(mu_);
  engines_[static_cast<size_t>(kind)].measured(static_cast<int>(path), static_cast<double>(ns),
                                               now_ns);
}

void OffloadPolicy::dropped(Blocking kind, Serve path) {
  std::lock_guard lk(mu_);
  engines_[static_cast<size_t>(kind)].dropped(static_cast<int>(path));
}

OffloadReport OffloadPolicy::report() const {
  std::lock_guard lk(mu_);
  OffloadReport r = counts_;
  for (size_t i = 0; i < engines_.size(); ++i) r.engines[i] = engines_[i].report();
  return r;
}

}  // namespace efuse::accel

#include "accel/io_path.h"

#include <algorithm>
#include <cmath>

namespace efuse::accel {

const char* to_string(IoPath p) { return p == IoPath::Cache ? "cache" : "passthrough"; }

const char* to_string(IoReason r) {
  switch (r) {
    case IoReason::Fixed: return "fixed";
    case IoReason::Unavailable: return "unavailable";
    case IoReason::Setid: return "setid";
    case IoReason::Writer: return "writer";
    case IoReason::KernelOpen: return "kernel_open";
    case IoReason::Guess: return "guess";
    case IoReason::Probe: return "probe";
    case IoReason::Predicted: return "predicted";
    case IoReason::History: return "history";
    case IoReason::kCount: break;
  }
  return "?";
}

namespace {

// Changes of an epoch's cost per open below 2 us are noise for drift detection (a
// registration takes a few us, a fetch 20 us and more).
constexpr double kNoiseFloorNs = 2'000;
// Weight of a new epoch in a file's mean cost per path.
constexpr double kFileAlpha = 0.5;

IoReason reason_of(Pick p) {
  switch (p) {
    case Pick::Guess: return IoReason::Guess;
    case Pick::Probe: return IoReason::Probe;
    case Pick::Predicted: return IoReason::Predicted;
  }
  return IoReason::Guess;
}

}  // namespace

IoPathPolicy::IoPathPolicy() { engines_.fill(Engine(kNoiseFloorNs)); }

void IoPathPolicy::set_mode(IoMode m) {
  std::lock_guard lk(mu_);
  mode_ = m;
}

void IoPathPolicy::set_settings(const Settings& s) {
  std::lock_guard lk(mu_);
  for (Engine& e : engines_) e.set_settings(s);
}

void FileIo::Mean::add(double v) {
  mean = n == 0 ? v : mean + kFileAlpha * (v - mean);
  ++n;
}

int IoPathPolicy::class_of(const OpenFacts& f, bool warm) {
  int size = f.size <= kSmall ? 0 : f.size <= kMedium ? 1 : 2;
  return size * 2 + (warm ? 1 : 0);
}

std::string IoPathPolicy::class_name(int klass) {
  static constexpr const char* kSizes[] = {"small", "medium", "large"};
  std::string name = kSizes[std::clamp(klass / 2, 0, 2)];
  name += (klass & 1) != 0 ? "_warm_read" : "_cold_read";
  return name;
}

double IoPathPolicy::size_feature(off_t size) {
  // small: 512 B..64 KiB, medium: 64 KiB..8 MiB, large: 8 MiB..1 GiB (each 7 doublings).
  double lo = size <= kSmall ? 9 : size <= kMedium ? 16 : 23;
  double bits = std::log2(static_cast<double>(std::max<off_t>(size, 1)));
  return std::clamp((bits - lo) / 7.0, 0.0, 1.0);
}

bool IoPathPolicy::by_history(const FileIo& f, const Engine& e, IoPath* path) {
  const double pt = f.passthrough.n > 0 ? f.passthrough.mean : e.predicted(1);
  if (pt < 0) return false;
  // Do its pages stay between epochs? Unknown (no warm epoch measured) counts as yes.
  const bool pages_stay = f.warm_cache.n == 0 || f.warm_cache.mean < pt;
  if (f.warm) {
    if (f.warm_cache.n == 0) return false;
    *path = pages_stay ? IoPath::Cache : IoPath::Passthrough;
    return true;
  }
  const double fetch = f.cold_cache.n > 0 ? f.cold_cache.mean : e.predicted(0);
  if (fetch < 0) return false;
  // Ski rental: a file opened n times is taken to be opened about as often again, so a fetch
  // now is spread over n + 1 opens; passthrough pays its cost at every open.
  const double cache = pages_stay ? fetch / (f.epochs + 1) : fetch;
  *path = cache < pt ? IoPath::Cache : IoPath::Passthrough;
  return true;
}

IoPath IoPathPolicy::open(FileIo& f, const OpenFacts& facts, int64_t now_ns) {
  f.warm = f.epochs > 0 && f.last == IoPath::Cache;
  f.opens = 1;
  f.auto_decided = false;
  f.probe = false;
  f.requests.store(0, std::memory_order_relaxed);
  f.service_ns.store(0, std::memory_order_relaxed);
  f.backing_ns.store(0, std::memory_order_relaxed);
  f.refused.store(false, std::memory_order_relaxed);

  std::lock_guard lk(mu_);
  IoPath path = IoPath::Cache;
  IoReason why = IoReason::Fixed;
  if (mode_ == IoMode::Cache) {
    why = IoReason::Fixed;
  } else if (!facts.passthrough_available) {
    why = IoReason::Unavailable;
  } else if (facts.setid_write) {
    why = IoReason::Setid;
  } else if (mode_ == IoMode::Passthrough) {
    path = IoPath::Passthrough;
  } else if (facts.writable) {
    path = IoPath::Passthrough;
    why = IoReason::Writer;
  } else if (facts.kernel_opens) {
    // Only the first open of a passthrough file reaches efused: cheaper than any cache.
    path = IoPath::Passthrough;
    why = IoReason::KernelOpen;
  } else {
    const int k = class_of(facts, f.warm);
    used_[k] = true;
    f.klass = static_cast<uint8_t>(k);
    f.auto_decided = true;
    // Today's fixed rule is the guess: read-only opens of small files use the page cache.
    IoPath guess = facts.size <= kSmall ? IoPath::Cache : IoPath::Passthrough;
    Engine& e = engines_[k];
    Choice c = e.choose(now_ns, static_cast<int>(guess), size_feature(facts.size));
    path = static_cast<IoPath>(c.path);
    why = reason_of(c.pick);
    // Committed, a file with epochs of its own decides by them (probes are the class's).
    if (c.pick == Pick::Predicted && f.epochs > 0 && by_history(f, e, &path))
      why = IoReason::History;
  }
  f.path = path;
  f.probe = why == IoReason::Probe;
  ++decisions_[static_cast<size_t>(path)][static_cast<size_t>(why)];
  return path;
}

double IoPathPolicy::attr_refetch_ratio() const {
  const uint64_t epochs = passthrough_epochs_.load(std::memory_order_relaxed);
  if (epochs == 0) return 0;
  return std::min(1.0, static_cast<double>(attr_refetches_.load(std::memory_order_relaxed)) /
                           static_cast<double>(epochs));
}

void IoPathPolicy::closed(FileIo& f, int64_t now_ns) {
  const bool measure = f.auto_decided;
  f.auto_decided = false;
  ++f.epochs;
  f.last = f.path;
  // The window in which a GETATTR counts as the refetch a passthrough epoch caused: from its
  // end to the end of the next epoch.
  const bool passthrough = f.path == IoPath::Passthrough && !f.refused.load(std::memory_order_relaxed);
  f.attr_due.store(passthrough, std::memory_order_relaxed);
  // Counted after this epoch is priced: its own refetch has not come yet.
  struct CountAfter {
    std::atomic<uint64_t>* n;
    ~CountAfter() {
      if (n != nullptr) n->fetch_add(1, std::memory_order_relaxed);
    }
  } count{passthrough ? &passthrough_epochs_ : nullptr};
  if (!measure) return;
  const int p = static_cast<int>(f.path);
  std::lock_guard lk(mu_);
  Engine& e = engines_[f.klass];
  if (f.path == IoPath::Passthrough && f.refused.load(std::memory_order_relaxed)) {
    e.failed(p, now_ns);
    ++epochs_measured_;
    f.last = IoPath::Cache;  // it was served through the page cache
    return;
  }
  const double opens = std::max<uint32_t>(f.opens, 1);
  double cost;
  if (f.path == IoPath::Cache)
    cost = (static_cast<double>(f.requests.load(std::memory_order_relaxed)) * kUpcallNs +
            static_cast<double>(f.service_ns.load(std::memory_order_relaxed))) / opens;
  else
    cost = (static_cast<double>(f.backing_ns.load(std::memory_order_relaxed)) +
            attr_refetch_ratio() * kUpcallNs) / opens +
           kBackingFileNs;
  e.measured(p, cost, now_ns);
  ++epochs_measured_;
  if (f.path == IoPath::Passthrough) f.passthrough.add(cost);
  else if (f.warm) f.warm_cache.add(cost);
  else f.cold_cache.add(cost);
}

IoPathReport IoPathPolicy::report() const {
  std::lock_guard lk(mu_);
  IoPathReport r;
  r.decisions = decisions_;
  r.epochs_measured = epochs_measured_;
  for (int k = 0; k < kClasses; ++k)
    if (used_[k]) r.classes.push_back({class_name(k), engines_[k].report()});
  return r;
}

}  // namespace efuse::accel

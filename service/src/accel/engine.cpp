#include "accel/engine.h"

#include <algorithm>
#include <cmath>

namespace efuse::accel {

const char* to_string(ProbeCause c) {
  switch (c) {
    case ProbeCause::Start: return "start";
    case ProbeCause::Round: return "round";
    case ProbeCause::Period: return "period";
    case ProbeCause::Drift: return "drift";
    case ProbeCause::Shift: return "shift";
    case ProbeCause::kCount: break;
  }
  return "?";
}

void Engine::start_probe(int64_t, ProbeCause cause) {
  phase_ = Phase::Probe;
  // Measurements still due from decisions of the previous probe count for this one.
  for (Probe& p : probe_) p = Probe{0, 0, p.pending, false};
  probe_decisions_ = 0;
  probe_feature_sum_ = 0;
  probe_cause_ = cause;
  ++probes_[static_cast<size_t>(cause)];
}

Choice Engine::choose(int64_t now_ns, int guess, double feature) {
  guess = guess != 0 ? 1 : 0;
  if (phase_ == Phase::Commit) {
    const double period_ns = settings_.reprobe_interval * 1e9 * backoff_;
    ProbeCause cause = ProbeCause::kCount;
    if (round_left_ == 0) cause = ProbeCause::Round;
    else if (static_cast<double>(now_ns - committed_at_ns_) >= period_ns) cause = ProbeCause::Period;
    else if (drifted()) cause = ProbeCause::Drift;
    else if (shifted()) cause = ProbeCause::Shift;
    if (cause != ProbeCause::kCount) start_probe(now_ns, cause);
  }
  if (phase_ == Phase::Commit) {
    --round_left_;
    feature_mean_ = feature_n_ == 0 ? feature : feature_mean_ + kAlpha * (feature - feature_mean_);
    ++feature_n_;
    return {committed_, Pick::Predicted};
  }
  // Probing: the path with fewer measurements (counting those still due), the guess on a tie.
  // A path that failed gets no more decisions in this probe.
  ++probe_decisions_;
  probe_feature_sum_ += feature;
  int path = guess;
  const Probe& a = probe_[guess];
  const Probe& b = probe_[1 - guess];
  if (a.failed && !b.failed) path = 1 - guess;
  else if (!a.failed && !b.failed && b.n + b.pending < a.n + a.pending) path = 1 - guess;
  ++probe_[path].pending;
  // Decisions may outrun their measurements (files held open): after many more decisions
  // than the probe needs, commit to what was measured.
  if (probe_decisions_ >= 8 * std::max<uint32_t>(settings_.probe, 1)) finish_probe(now_ns);
  return {path, measured_any_ ? Pick::Probe : Pick::Guess};
}

void Engine::measured(int path, double cost, int64_t now_ns) {
  path = path != 0 ? 1 : 0;
  measured_any_ = true;
  Probe& p = probe_[path];
  if (p.pending > 0) --p.pending;
  if (phase_ == Phase::Probe) {
    ++p.n;
    p.sum += cost;
    if (probe_[0].done(settings_.probe) && probe_[1].done(settings_.probe)) {
      finish_probe(now_ns);
    } else if (probe_[0].n > 0 && probe_[1].n > 0 && !probe_[0].failed && !probe_[1].failed) {
      const double a = probe_[0].sum / probe_[0].n, b = probe_[1].sum / probe_[1].n;
      const double hi = std::max(a, b), lo = std::min(a, b);
      if (hi - lo > noise_floor_ && hi >= lo * kDecisive) finish_probe(now_ns);
    }
    return;
  }
  if (path != committed_) return;  // due from the probe before: it has been decided without it
  cost_mean_ = cost_n_ == 0 ? cost : cost_mean_ + kAlpha * (cost - cost_mean_);
  ++cost_n_;
}

void Engine::failed(int path, int64_t now_ns) {
  path = path != 0 ? 1 : 0;
  Probe& p = probe_[path];
  if (p.pending > 0) --p.pending;
  p.failed = true;
  if (phase_ == Phase::Probe) {
    if (probe_[1 - path].done(settings_.probe)) finish_probe(now_ns);
  } else if (path == committed_) {
    // The committed path is refused: probe again (the other path will serve meanwhile).
    start_probe(now_ns, ProbeCause::Drift);
    probe_[path].failed = true;
  }
}

int Engine::held(int guess, bool* predicted) const {
  *predicted = committed_ >= 0;
  return committed_ >= 0 ? committed_ : (guess != 0 ? 1 : 0);
}

void Engine::dropped(int path) {
  Probe& p = probe_[path != 0 ? 1 : 0];
  if (p.pending > 0) --p.pending;
}

void Engine::finish_probe(int64_t now_ns) {
  for (int i = 0; i < 2; ++i) {
    const Probe& p = probe_[i];
    if (p.failed) predicted_[i] = -1;
    else if (p.n > 0) predicted_[i] = p.sum / p.n;
    // A path the probe did not measure keeps its earlier prediction.
  }
  const bool known0 = predicted_[0] >= 0 && !probe_[0].failed;
  const bool known1 = predicted_[1] >= 0 && !probe_[1].failed;
  int winner;
  bool confirmed = false;
  if (known0 && known1) {
    winner = predicted_[1] < predicted_[0] ? 1 : 0;
    // A first commit between two paths within the margin takes the class's tie path.
    if (committed_ < 0 && tie_ >= 0 && predicted_[tie_] <= predicted_[1 - tie_] * (1 + kMargin))
      winner = tie_;
    // Hysteresis: the path committed before stays unless the other is clearly cheaper.
    if (committed_ >= 0 && winner != committed_ &&
        predicted_[winner] * (1 + kMargin) >= predicted_[committed_])
      winner = committed_;
    // A routine probe (round or period) found the committed path still clearly cheaper.
    confirmed = committed_ >= 0 && winner == committed_ &&
                predicted_[winner] * (1 + kMargin) < predicted_[1 - winner] &&
                (probe_cause_ == ProbeCause::Round || probe_cause_ == ProbeCause::Period);
    // The first probe found the other path kDecisive times dearer: as sure as a confirmation.
    const double lo = predicted_[winner], hi = predicted_[1 - winner];
    if (probe_cause_ == ProbeCause::Start && committed_ < 0 && hi - lo > noise_floor_ &&
        hi >= lo * kDecisive)
      confirmed = true;
  } else if (known0 || known1) {
    winner = known1 ? 1 : 0;
  } else {
    // Nothing usable: keep probing (both failed: the caller decides without the engine).
    if (probe_[0].failed && probe_[1].failed) {
      committed_ = -1;
    }
    phase_ = Phase::Probe;
    probe_decisions_ = 0;
    return;
  }
  phase_ = Phase::Commit;
  committed_ = winner;
  backoff_ = confirmed ? std::min(backoff_ * 2, kMaxBackoff) : 1;
  round_left_ = static_cast<uint32_t>(
      std::min<uint64_t>(static_cast<uint64_t>(settings_.round) * backoff_, UINT32_MAX));
  committed_at_ns_ = now_ns;
  feature_base_ = probe_decisions_ > 0 ? probe_feature_sum_ / probe_decisions_ : 0;
  feature_mean_ = feature_base_;
  feature_n_ = 0;
  cost_mean_ = 0;
  cost_n_ = 0;
}

bool Engine::drifted() const {
  if (committed_ < 0 || cost_n_ < std::max<uint32_t>(settings_.probe, 1)) return false;
  const double want = predicted_[committed_];
  if (want < 0) return false;
  const double diff = std::fabs(cost_mean_ - want);
  if (diff <= noise_floor_) return false;
  // Still kDecisive times cheaper than the other path was: a probe would pay for the other
  // path's cost to learn what the choice would stay unless the other changed as much (the
  // period bounds that). A passthrough open of a large file (~5 us, 10 with a slow ioctl
  // under load) against its cache epoch (tens of ms) drifted on noise and probed the cache.
  const double other = predicted_[1 - committed_];
  if (other >= 0 && cost_mean_ * kDecisive <= other) return false;
  return cost_mean_ > want * kDrift || cost_mean_ * kDrift < want;
}

bool Engine::shifted() const {
  if (feature_n_ < std::max<uint32_t>(settings_.probe, 1)) return false;
  return std::fabs(feature_mean_ - feature_base_) > kShift;
}

EngineReport Engine::report() const {
  EngineReport r;
  r.phase = phase_;
  r.choice = phase_ == Phase::Commit ? committed_ : -1;
  r.predicted = predicted_;
  for (int i = 0; i < 2; ++i) {
    r.probe_samples[i] = probe_[i].n;
    r.failed[i] = probe_[i].failed;
  }
  r.round_left = phase_ == Phase::Commit ? round_left_ : 0;
  r.probes = probes_;
  return r;
}

}  // namespace efuse::accel

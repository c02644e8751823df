// The adaptive scheduler every I/O path choice uses: probe both paths, predict, commit for
// a round, probe again (docs/adaptive-io.md).
//
// An Engine chooses between two paths (0 and 1) for a stream of decisions. It is pure
// logic: callers feed it the time (`now_ns`, any monotonic clock) and the cost each
// decision turned out to have, measured by whoever served it, so tests drive it with
// simulated costs and times. Not thread-safe: the owner serializes calls.
//
//   probe:  the next decisions alternate between the paths until each has `probe`
//           measurements (the first decision, before anything was measured, takes the
//           caller's guess), or until one measurement each shows one path kDecisive times
//           dearer than the other;
//   commit: the path with the lower mean measured cost (the other one must be better by
//           kMargin to displace the path committed before) serves the next `round`
//           decisions for at most `reprobe_interval`, both twice as long after each probe
//           that confirmed the committed path, or (the first probe) found the other path
//           kDecisive times dearer (up to kMaxBackoff times: costs that stay put are probed
//           less often, and a probe of a path that much dearer costs the most);
//   probe again when the round is used up, when its period has passed since the
//   commit, when the committed path's measured costs drift from the prediction (by a
//   factor kDrift and more than the engine's noise floor, unless they are still kDecisive
//   times below the other path's prediction), or when the workload shifts
//   (the mean of the decisions' feature, a number in [0, 1] the caller chooses, moves by
//   more than kShift from its mean during the probe).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace efuse::accel {

// Per-mount settings of every engine (mounts.yaml `adaptive:`); replaced live on reload.
struct Settings {
  uint32_t probe = 4;              // measurements of each path per probe
  uint32_t round = 256;            // decisions committed to a prediction before probing again
  double reprobe_interval = 60.0;  // seconds after which a committed prediction is probed again
  bool operator==(const Settings&) const = default;
};

// Why an engine made a decision.
enum class Pick : uint8_t {
  Guess,      // nothing measured yet: the caller's guess
  Probe,      // probing: the path with fewer measurements
  Predicted,  // committed: the path with the lower predicted cost
};

// Why a probe started.
enum class ProbeCause : uint8_t { Start, Round, Period, Drift, Shift, kCount };
const char* to_string(ProbeCause c);

enum class Phase : uint8_t { Probe, Commit };

struct Choice {
  int path = 0;
  Pick pick = Pick::Guess;
};

// What an engine knows, for /metrics and efusectl status.
struct EngineReport {
  Phase phase = Phase::Probe;
  int choice = -1;  // committed path; -1 while the first probe runs
  // Mean cost of each path in the latest completed probe; negative: not measured (or the
  // path failed).
  std::array<double, 2> predicted{-1, -1};
  std::array<uint32_t, 2> probe_samples{};  // measurements of the running probe
  std::array<bool, 2> failed{};             // the path was refused since the probe started
  uint32_t round_left = 0;
  std::array<uint64_t, static_cast<std::size_t>(ProbeCause::kCount)> probes{};  // by cause
};

class Engine {
 public:
  // Changes of the committed path's cost smaller than noise_floor (in cost units) are not
  // drift, however large the factor. `tie` (0 or 1; -1: none) is the path a first commit
  // takes when the probe found the two within kMargin of each other: the path with a
  // benefit the costs do not count (later probes keep the committed path within the margin).
  explicit Engine(double noise_floor = 0, int tie = -1) : noise_floor_(noise_floor), tie_(tie) {
    start_probe(0, ProbeCause::Start);
  }

  void set_settings(const Settings& s) { settings_ = s; }
  const Settings& settings() const { return settings_; }

  // The path of the next decision. `guess` is the caller's path when nothing is known;
  // `feature` (0..1) describes the decision's workload for shift detection.
  Choice choose(int64_t now_ns, int guess, double feature);
  // A decision for `path` cost `cost` (any unit, the same for both paths).
  void measured(int path, double cost, int64_t now_ns);
  // A decision for `path` could not be served by it (refused): the probe does without it.
  void failed(int path, int64_t now_ns);
  // A decision for `path` ended without a measurement (nothing to measure).
  void dropped(int path);
  // The path for a decision that must not probe (the caller is running a probe of its own
  // on it, and two at once would cost both and blur each): the committed path (also while
  // a probe for a new commit runs), or `guess` before the first commit. Not a decision of
  // the engine: no probe starts, the round is not counted down. Its measurement, if the
  // caller reports one, counts like any other. `*predicted` says which of the two it was.
  int held(int guess, bool* predicted) const;

  EngineReport report() const;
  // The prediction for `path` (mean cost of the latest probe); negative when unknown.
  double predicted(int path) const { return predicted_[path]; }
  Phase phase() const { return phase_; }

  // Above this share of changed feature the workload has shifted.
  static constexpr double kShift = 0.3;
  // The committed path's cost moved by this factor from its prediction: probe again.
  static constexpr double kDrift = 2.0;
  // The other path must be cheaper by this share to displace the previous choice.
  static constexpr double kMargin = 0.1;
  // Weight of a new measurement in the running means of the committed phase.
  static constexpr double kAlpha = 0.2;
  // A probe ends early, after one measurement of each path, when one path costs this many
  // times the other (and more than the noise floor): more samples of a path that slow would
  // only cost more.
  static constexpr double kDecisive = 8.0;
  // A probe started because the round was used up or the period passed that confirms the
  // committed path, cheaper than the other by more than kMargin, doubles the next round and
  // the next period, up to this many times `round` and `reprobe_interval`; so does the first
  // probe when it found one path kDecisive times dearer than the other (beyond the noise
  // floor): the margin is as sure as a confirmation, and each probe of the dear path costs
  // kDecisive times the other's (a large file's cache epoch: tens of milliseconds). Any
  // other outcome (the other path wins, the two are within kMargin, a probe for drift, a
  // shift or a refusal, a first probe that was not decisive) brings both back to the
  // settings. Drift and shift still start a probe at once.
  static constexpr uint32_t kMaxBackoff = 16;

 private:
  struct Probe {
    uint32_t n = 0;
    double sum = 0;
    uint32_t pending = 0;  // decisions not measured yet
    bool failed = false;
    bool done(uint32_t want) const { return failed || n >= want; }
  };

  void start_probe(int64_t now_ns, ProbeCause cause);
  void finish_probe(int64_t now_ns);
  bool shifted() const;
  bool drifted() const;

  Settings settings_;
  double noise_floor_;
  int tie_ = -1;
  Phase phase_ = Phase::Probe;
  bool measured_any_ = false;
  std::array<Probe, 2> probe_{};
  uint32_t probe_decisions_ = 0;
  double probe_feature_sum_ = 0;
  std::array<double, 2> predicted_{-1, -1};
  int committed_ = -1;
  uint32_t round_left_ = 0;
  uint32_t backoff_ = 1;  // the running commit's round and period are the settings' x backoff_
  ProbeCause probe_cause_ = ProbeCause::Start;  // why the running (or latest) probe started
  int64_t committed_at_ns_ = 0;
  double feature_base_ = 0;    // mean feature of the probe's decisions
  double feature_mean_ = 0;    // running mean since the commit
  uint32_t feature_n_ = 0;
  double cost_mean_ = 0;       // running mean of the committed path's cost since the commit
  uint32_t cost_n_ = 0;
  std::array<uint64_t, static_cast<std::size_t>(ProbeCause::kCount)> probes_{};
};

}  // namespace efuse::accel

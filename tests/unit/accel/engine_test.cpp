// The adaptive scheduler's engine, driven with simulated costs and times (no clock).
#include "accel/engine.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace efuse::accel {
namespace {

constexpr int64_t kSecond = 1'000'000'000;

// Decides and measures `n` times with the cost each path has in `cost`, at time `now`;
// returns how many decisions went to path 1.
int run(Engine& e, int n, const double (&cost)[2], int64_t now = 0, double feature = 0) {
  int ones = 0;
  for (int i = 0; i < n; ++i) {
    Choice c = e.choose(now, 0, feature);
    ones += c.path;
    e.measured(c.path, cost[c.path], now);
  }
  return ones;
}

Settings small_settings() {
  Settings s;
  s.probe = 3;
  s.round = 20;
  s.reprobe_interval = 10;
  return s;
}

// small_settings() with rounds and a period too long to end in the test: only a drift or a
// shift of the workload can start a probe.
Settings drift_settings() {
  Settings s = small_settings();
  s.round = 1000;
  s.reprobe_interval = 1000;
  return s;
}

TEST(Engine, FirstDecisionIsTheGuessThenProbesAlternate) {
  Engine e;
  e.set_settings(small_settings());
  Choice c = e.choose(0, 1, 0);
  EXPECT_EQ(c.path, 1);
  EXPECT_EQ(c.pick, Pick::Guess);
  e.measured(1, 10, 0);
  // Path 0 has fewer measurements now.
  c = e.choose(0, 1, 0);
  EXPECT_EQ(c.path, 0);
  EXPECT_EQ(c.pick, Pick::Probe);
  EXPECT_EQ(e.phase(), Phase::Probe);
}

TEST(Engine, CommitsToTheCheaperPathAfterTheProbe) {
  Engine e;
  e.set_settings(small_settings());
  const double cost[2] = {50, 10};
  run(e, 6, cost);  // 3 measurements each
  EXPECT_EQ(e.phase(), Phase::Commit);
  EXPECT_DOUBLE_EQ(e.predicted(0), 50);
  EXPECT_DOUBLE_EQ(e.predicted(1), 10);
  for (int i = 0; i < 20; ++i) {
    Choice c = e.choose(0, 0, 0);
    EXPECT_EQ(c.path, 1);
    EXPECT_EQ(c.pick, Pick::Predicted);
    e.measured(c.path, 10, 0);
  }
  EngineReport r = e.report();
  EXPECT_EQ(r.choice, 1);
  EXPECT_EQ(r.round_left, 0u);
}

TEST(Engine, ProbesAgainWhenTheRoundIsUsedUp) {
  Engine e;
  e.set_settings(small_settings());
  const double cost[2] = {50, 10};
  run(e, 6 + 20, cost);
  EXPECT_EQ(e.phase(), Phase::Commit);
  Choice c = e.choose(0, 0, 0);
  EXPECT_EQ(c.pick, Pick::Probe);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Round)], 1u);
}

TEST(Engine, ProbesAgainAfterTheInterval) {
  Engine e;
  e.set_settings(small_settings());
  const double cost[2] = {50, 10};
  run(e, 6, cost, 0);
  EXPECT_EQ(e.choose(9 * kSecond, 0, 0).pick, Pick::Predicted);
  EXPECT_EQ(e.choose(10 * kSecond, 0, 0).pick, Pick::Probe);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Period)], 1u);
}

TEST(Engine, FollowsAWorkloadWhoseCostsSwap) {
  Engine e;
  e.set_settings(drift_settings());
  const double before[2] = {50'000, 5'000};
  run(e, 40, before);
  EXPECT_EQ(e.report().choice, 1);
  // Path 1 becomes ten times dearer: its measurements drift from the prediction, the
  // engine probes again and moves to path 0.
  const double after[2] = {5'000, 50'000};
  run(e, 40, after);
  EngineReport r = e.report();
  EXPECT_EQ(r.choice, 0);
  EXPECT_GE(r.probes[static_cast<size_t>(ProbeCause::Drift)], 1u);
}

TEST(Engine, DriftBelowTheNoiseFloorIsIgnored) {
  Engine e(1000);
  e.set_settings(drift_settings());
  const double before[2] = {500, 10};
  run(e, 6, before);
  const double after[2] = {500, 100};  // 10x, but only 90 units
  run(e, 50, after);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Drift)], 0u);
  EXPECT_EQ(e.report().choice, 1);
}

// A committed path still kDecisive times cheaper than the other path's prediction does not
// drift into a probe, however much it moves: a passthrough open of a large file at 12 us
// instead of 5 (a slow ioctl on a loaded host) against its cache epoch's 3 ms. Once it comes
// within kDecisive of the other path, drift probes as before.
TEST(Engine, ADecisiveChoiceDoesNotDriftIntoAProbe) {
  Engine e(100);
  e.set_settings(drift_settings());
  const double start[2] = {3'000'000, 5'000};
  run(e, 2, start);
  ASSERT_EQ(e.report().choice, 1);
  const double noisy[2] = {3'000'000, 12'000};  // 2.4x the prediction, 7 us more
  EXPECT_EQ(run(e, 50, noisy), 50);
  EXPECT_EQ(e.phase(), Phase::Commit);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Drift)], 0u);
  const double dear[2] = {3'000'000, 500'000};  // within 8x of the other path
  run(e, 50, dear);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Drift)], 1u);
}

TEST(Engine, AShiftOfTheFeatureStartsAProbe) {
  Engine e;
  e.set_settings(drift_settings());
  const double cost[2] = {50, 10};
  run(e, 6, cost, 0, 0.0);
  run(e, 10, cost, 0, 0.1);  // within kShift
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Shift)], 0u);
  run(e, 20, cost, 0, 0.9);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Shift)], 1u);
}

TEST(Engine, HysteresisKeepsTheChoiceWhenTheOtherIsBarelyCheaper) {
  Engine e;
  e.set_settings(small_settings());
  const double first[2] = {50, 10};
  run(e, 6 + 20, first);
  EXPECT_EQ(e.report().choice, 1);
  const double close[2] = {9.5, 10};  // 5 % cheaper: within kMargin
  run(e, 6, close);
  EXPECT_EQ(e.phase(), Phase::Commit);
  EXPECT_EQ(e.report().choice, 1);
  run(e, 20, close);
  const double clear[2] = {5, 10};
  run(e, 6, clear);
  EXPECT_EQ(e.report().choice, 0);
}

// An engine with a tie path takes it at its first commit when the two are within kMargin,
// not when the other is clearly cheaper; once committed, the hysteresis decides as before.
TEST(Engine, AFirstCommitWithinTheMarginTakesTheTiePath) {
  {
    Engine e(0, 1);
    e.set_settings(small_settings());
    const double close[2] = {9.5, 10};  // path 1 5 % dearer
    run(e, 6, close);
    EXPECT_EQ(e.report().choice, 1);
    run(e, 20, close);  // the round's end: probed again, still close, still path 1
    run(e, 6, close);
    EXPECT_EQ(e.report().choice, 1);
    const double clear[2] = {5, 10};
    run(e, 20 + 6, clear);
    EXPECT_EQ(e.report().choice, 0);
  }
  {
    Engine e(0, 1);
    e.set_settings(small_settings());
    const double clear[2] = {8, 10};  // path 1 25 % dearer: not a tie
    run(e, 6, clear);
    EXPECT_EQ(e.report().choice, 0);
  }
  {
    Engine e;  // no tie path: the cheaper, however close
    e.set_settings(small_settings());
    const double close[2] = {9.5, 10};
    run(e, 6, close);
    EXPECT_EQ(e.report().choice, 0);
  }
}

TEST(Engine, ADecisiveDifferenceEndsTheProbeEarly) {
  Engine e(100);
  e.set_settings(small_settings());
  const double cost[2] = {3'000'000, 5'000};  // a cache epoch of a large file vs passthrough
  EXPECT_EQ(run(e, 2, cost), 1);
  EXPECT_EQ(e.phase(), Phase::Commit) << "one measurement each was enough";
  EXPECT_EQ(e.report().choice, 1);
  // Within kDecisive, or within the noise floor: the probe takes its full length.
  Engine f(100);
  f.set_settings(small_settings());
  const double close[2] = {30'000, 5'000};
  run(f, 2, close);
  EXPECT_EQ(f.phase(), Phase::Probe);
  Engine g(1'000);
  g.set_settings(small_settings());
  const double tiny[2] = {900, 10};
  run(g, 2, tiny);
  EXPECT_EQ(g.phase(), Phase::Probe);
}

// One measurement each, one path 600 times dearer (a large file's cache epoch against its
// passthrough open): the first probe counts as a confirmation, so the next round and period
// are twice the settings'. Each probe of the dear path costs what it costs.
TEST(Engine, ADecisiveFirstProbeLengthensTheRoundAndThePeriod) {
  Engine e(100);
  e.set_settings(small_settings());  // probe 3, round 20, period 10 s
  const double cost[2] = {3'000'000, 5'000};
  EXPECT_EQ(run(e, 2, cost), 1);
  ASSERT_EQ(e.phase(), Phase::Commit);
  EXPECT_EQ(e.report().choice, 1);
  EXPECT_EQ(e.report().round_left, 40u);
  EXPECT_EQ(e.choose(19 * kSecond, 0, 0).pick, Pick::Predicted) << "a period of 20 s";
  EXPECT_EQ(e.choose(20 * kSecond, 0, 0).pick, Pick::Probe);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Period)], 1u);
  // Not decisive (6 times dearer): the first probe leaves both as the settings say.
  Engine f(100);
  f.set_settings(small_settings());
  const double close[2] = {30'000, 5'000};
  run(f, 6, close);
  ASSERT_EQ(f.phase(), Phase::Commit);
  EXPECT_EQ(f.report().round_left, 20u);
  EXPECT_EQ(f.choose(10 * kSecond, 0, 0).pick, Pick::Probe);
  // Decisive but within the noise floor: neither.
  Engine g(1'000);
  g.set_settings(small_settings());
  const double tiny[2] = {900, 10};
  run(g, 6, tiny);
  ASSERT_EQ(g.phase(), Phase::Commit);
  EXPECT_EQ(g.report().round_left, 20u);
}

// A routine probe that confirms the committed path doubles the period with the round.
TEST(Engine, AConfirmingProbeLengthensThePeriodToo) {
  Engine e;
  e.set_settings(small_settings());  // probe 3, round 20, period 10 s
  const double cost[2] = {50, 10};
  run(e, 6 + 20 + 6, cost);  // committed, the round used up, confirmed at time 0
  ASSERT_EQ(e.report().round_left, 40u);
  EXPECT_EQ(e.choose(19 * kSecond, 0, 0).pick, Pick::Predicted);
  EXPECT_EQ(e.choose(20 * kSecond, 0, 0).pick, Pick::Probe);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Period)], 1u);
  // The period probe finds the costs swapped: back to the settings' period.
  const double swapped[2] = {10, 50};
  while (e.phase() == Phase::Probe) run(e, 1, swapped, 20 * kSecond);
  EXPECT_EQ(e.report().choice, 0);
  EXPECT_EQ(e.choose(29 * kSecond, 0, 0).pick, Pick::Predicted);
  EXPECT_EQ(e.choose(30 * kSecond, 0, 0).pick, Pick::Probe);
}

// A decision that must not probe (the caller's own probe runs on it) takes the committed
// path, or the guess before the first commit, and changes nothing in the engine.
TEST(Engine, AHeldDecisionTakesTheCommittedPath) {
  Engine e;
  e.set_settings(small_settings());
  bool predicted = true;
  EXPECT_EQ(e.held(1, &predicted), 1);
  EXPECT_FALSE(predicted);
  const double cost[2] = {10, 50};
  run(e, 6, cost);
  ASSERT_EQ(e.report().choice, 0);
  EXPECT_EQ(e.held(1, &predicted), 0);
  EXPECT_TRUE(predicted);
  EXPECT_EQ(e.report().round_left, 20u) << "not counted as a decision";
  // While a probe for a new commit runs, the path committed before.
  EXPECT_EQ(e.choose(10 * kSecond, 0, 0).pick, Pick::Probe);
  EXPECT_EQ(e.held(1, &predicted), 0);
  EXPECT_TRUE(predicted);
}

TEST(Engine, AFailedPathIsNotChosen) {
  Engine e;
  e.set_settings(small_settings());
  Choice c = e.choose(0, 1, 0);
  ASSERT_EQ(c.path, 1);
  e.failed(1, 0);
  for (int i = 0; i < 3; ++i) {
    c = e.choose(0, 1, 0);
    EXPECT_EQ(c.path, 0);
    e.measured(0, 100, 0);
  }
  EngineReport r = e.report();
  EXPECT_EQ(r.phase, Phase::Commit);
  EXPECT_EQ(r.choice, 0);
  EXPECT_LT(r.predicted[1], 0);
}

TEST(Engine, CommitsWhenMeasurementsNeverArrive) {
  Engine e;
  e.set_settings(small_settings());
  // Decisions whose files stay open: no measurement comes back.
  for (int i = 0; i < 8 * 3; ++i) e.choose(0, 0, 0);
  // Nothing measured at all: still probing (nothing to predict from).
  EXPECT_EQ(e.phase(), Phase::Probe);
  e.measured(0, 7, 0);
  for (int i = 0; i < 8 * 3; ++i) e.choose(0, 0, 0);
  EXPECT_EQ(e.phase(), Phase::Commit);
  EXPECT_EQ(e.report().choice, 0);
}

TEST(Engine, SettingsApplyFromTheNextRound) {
  Engine e;
  e.set_settings(small_settings());
  const double cost[2] = {50, 10};
  run(e, 6, cost);
  Settings s = small_settings();
  s.probe = 1;
  s.round = 2;
  e.set_settings(s);
  run(e, 20, cost);  // finishes the running round of 20
  run(e, 2, cost);   // a probe of one measurement each
  EXPECT_EQ(e.phase(), Phase::Commit);
  // The new round, doubled: the probe confirmed the committed path (see below).
  EXPECT_EQ(e.report().round_left, 2u * 2);
}

TEST(Engine, AProbeThatConfirmsTheChoiceDoublesTheNextRoundUpToALimit) {
  Engine e;
  Settings s = small_settings();  // probe 3, round 20
  s.reprobe_interval = 1e6;
  e.set_settings(s);
  const double cost[2] = {50, 10};
  run(e, 6, cost);  // the first probe: nothing to confirm, a round of 20
  EXPECT_EQ(e.report().round_left, 20u);
  uint32_t want = 20;
  for (int k = 0; k < 6; ++k) {
    run(e, static_cast<int>(e.report().round_left), cost);  // the round used up
    EXPECT_EQ(run(e, 6, cost), 3) << "a probe of 3 measurements each";
    want = std::min<uint32_t>(want * 2, 20 * Engine::kMaxBackoff);
    EXPECT_EQ(e.report().round_left, want) << k;
    EXPECT_EQ(e.report().choice, 1);
  }
  EXPECT_EQ(want, 20 * Engine::kMaxBackoff);
  EXPECT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Round)], 6u);
  // The costs swap: the next routine probe moves to path 0, and the round is 20 again.
  run(e, static_cast<int>(e.report().round_left), cost);
  const double swapped[2] = {10, 50};
  run(e, 6, swapped);
  EXPECT_EQ(e.report().choice, 0);
  EXPECT_EQ(e.report().round_left, 20u);
}

TEST(Engine, ACloseCallOrADriftProbeDoesNotLengthenTheRound) {
  Engine e;
  Settings s = small_settings();
  s.reprobe_interval = 1e6;
  e.set_settings(s);
  const double cost[2] = {50, 10};
  run(e, 6 + 20 + 6, cost);  // committed, then confirmed once: a round of 40
  ASSERT_EQ(e.report().round_left, 40u);
  // The committed path is still cheaper, but within kMargin: keep probing at the base rate.
  run(e, 40, cost);
  const double close[2] = {10.5, 10};
  run(e, 6, close);
  EXPECT_EQ(e.report().choice, 1);
  EXPECT_EQ(e.report().round_left, 20u);
  // Confirmed again (a round of 40), then the committed path's cost drifts: the drift probe
  // finds it still cheapest, but the round goes back to 20.
  run(e, 20, cost);
  run(e, 6, cost);
  ASSERT_EQ(e.report().round_left, 40u);
  const double drifted[2] = {500, 100};
  int decisions = 0;
  while (e.report().probes[static_cast<size_t>(ProbeCause::Drift)] == 0 && decisions < 40) {
    run(e, 1, drifted);
    ++decisions;
  }
  ASSERT_EQ(e.report().probes[static_cast<size_t>(ProbeCause::Drift)], 1u);
  while (e.phase() == Phase::Probe) run(e, 1, drifted);
  EXPECT_EQ(e.report().choice, 1);
  EXPECT_EQ(e.report().round_left, 20u);
}

}  // namespace
}  // namespace efuse::accel

// The /dev/fuse worker count policy (accel/workers.h), driven with simulated load and times.
#include "accel/workers.h"

#include <gtest/gtest.h>

namespace efuse::accel {
namespace {

constexpr int64_t kSec = 1'000'000'000;

TEST(WorkerCountPolicy, GrowsOnlyWhenEveryWorkerIsBusyAndBelowTheMaximum) {
  WorkerCountPolicy p(2, 4);
  p.started(0);
  EXPECT_FALSE(p.took(1, 2, 1)) << "one of two busy: the other reads the next request";
  EXPECT_TRUE(p.took(2, 2, 2)) << "both busy (a blocking request and a burst)";
  EXPECT_TRUE(p.took(3, 3, 3));
  EXPECT_FALSE(p.took(4, 4, 4)) << "at the maximum";
}

TEST(WorkerCountPolicy, AWorkerLeavesAfterAQuietWindowOnePerWindow) {
  WorkerCountPolicy p(2, 8, 10 * kSec);
  p.started(0);
  // 6 workers, never more than 2 busy at once: quiet (at least two idle at every request).
  for (int64_t t = 1; t < 10; ++t) {
    EXPECT_FALSE(p.took(2, 6, t * kSec));
    EXPECT_FALSE(p.finished(6, t * kSec)) << "within the first window";
  }
  EXPECT_TRUE(p.finished(6, 10 * kSec)) << "a whole quiet window: one leaves";
  EXPECT_FALSE(p.finished(5, 10 * kSec)) << "only one per window";
  EXPECT_FALSE(p.finished(5, 15 * kSec));
  EXPECT_TRUE(p.finished(5, 20 * kSec));
  EXPECT_TRUE(p.finished(4, 30 * kSec));
  EXPECT_TRUE(p.finished(3, 40 * kSec));
  EXPECT_FALSE(p.finished(2, 100 * kSec)) << "never below the minimum";
}

TEST(WorkerCountPolicy, CrowdedMomentsKeepTheWorkers) {
  WorkerCountPolicy p(1, 8, 10 * kSec);
  p.started(0);
  for (int64_t t = 0; t < 100; t += 5) {
    // Every 5 s a moment with only one of 4 workers idle.
    EXPECT_FALSE(p.took(3, 4, t * kSec));
    EXPECT_FALSE(p.finished(4, t * kSec + 1)) << t;
  }
}

TEST(WorkerCountPolicy, ALoweredMaximumSendsWorkersAwayAtOnce) {
  WorkerCountPolicy p(2, 8, 10 * kSec);
  p.started(0);
  EXPECT_TRUE(p.took(7, 7, 1));  // crowded: no quiet window
  p.set_limits(2, 4);
  EXPECT_EQ(p.max(), 4u);
  EXPECT_TRUE(p.finished(7, 2));
  EXPECT_TRUE(p.finished(6, 3));
  EXPECT_TRUE(p.finished(5, 4));
  EXPECT_FALSE(p.finished(4, 5)) << "at the new maximum, and not quiet";
  EXPECT_FALSE(p.took(4, 4, 6)) << "no growth above it";
  p.set_limits(3, 1);
  EXPECT_EQ(p.max(), 3u) << "a maximum below the minimum is the minimum";
}

}  // namespace
}  // namespace efuse::accel

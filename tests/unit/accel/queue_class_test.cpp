// The io_uring queue threads' scheduling class (accel/queue_class.h), driven with simulated
// schedstat looks: no clock, no threads.
#include "accel/queue_class.h"

#include <gtest/gtest.h>

namespace efuse::accel {
namespace {

constexpr int64_t kMs = 1'000'000;

// A queue thread as a guard sees it, advanced look by look.
struct Thread {
  int64_t now = 0;
  uint64_t delay = 0;
  uint64_t runs = 0;
  uint64_t seq = 1;  // inside its wait for requests
  bool runnable = false;

  // One look interval: `n` runs, each after waiting `wait_ns` for the CPU.
  SchedSample look(int64_t dt, uint64_t n, uint64_t wait_ns) {
    now += dt;
    runs += n;
    delay += n * wait_ns;
    seq += 2 * n;  // each run leaves the wait and enters the next one
    return SchedSample{now, delay, runs, runnable, seq};
  }
};

TEST(QueueClass, StartsIdleAndStaysIdleWhileTheClientsOwnWorkIsAllItWaitsFor) {
  QueueClassGuard g;
  Thread t;
  EXPECT_EQ(g.observe(t.look(0, 0, 0)), QueueClass::Idle);
  // tar on the same CPU: ~240 requests per 4 ms, each waiting ~20 us while the client works.
  for (int i = 0; i < 1000; ++i)
    ASSERT_EQ(g.observe(t.look(4 * kMs, 240, 20'000)), QueueClass::Idle) << i;
  EXPECT_EQ(g.starved(), 0u);
}

TEST(QueueClass, AnIdleMountStaysIdle) {
  QueueClassGuard g;
  Thread t;
  for (int i = 0; i < 100; ++i) ASSERT_EQ(g.observe(t.look(100 * kMs, 0, 0)), QueueClass::Idle);
  EXPECT_EQ(g.starved(), 0u);
}

TEST(QueueClass, WaitsOfASchedulerTickPerRunMakeItBatchForTheHold) {
  QueueClassSettings s;
  QueueClassGuard g(s);
  Thread t;
  g.observe(t.look(0, 0, 0));
  // A busy loop on the CPU: each request waits ~4 ms for the thread to run.
  EXPECT_EQ(g.observe(t.look(4 * kMs, 1, 4 * kMs)), QueueClass::Batch);
  EXPECT_EQ(g.starved(), 1u);
  EXPECT_EQ(g.hold_ns(), s.hold_ns);
  // Batch until the hold ends, however it is scheduled meanwhile.
  int64_t held = 0;
  while (held + 4 * kMs < s.hold_ns) {
    ASSERT_EQ(g.observe(t.look(4 * kMs, 10, 10'000)), QueueClass::Batch);
    held += 4 * kMs;
  }
  EXPECT_EQ(g.observe(t.look(8 * kMs, 10, 10'000)), QueueClass::Idle);
}

TEST(QueueClass, ALongWaitAmongShortOnesIsJudgedByTheMean) {
  QueueClassGuard g;
  Thread t;
  g.observe(t.look(0, 0, 0));
  // 10 runs in 4 ms, one of them waited 1 ms: mean 100 us, below the 500 us limit.
  t.delay += 1 * kMs;
  EXPECT_EQ(g.observe(t.look(4 * kMs, 10, 0)), QueueClass::Idle);
  // 2 runs, one waited 1.5 ms: mean 750 us.
  t.delay += 3 * kMs / 2;
  EXPECT_EQ(g.observe(t.look(4 * kMs, 2, 0)), QueueClass::Batch);
}

TEST(QueueClass, RunnableInTheSameWaitAtTwoLooksIsStarved) {
  QueueClassGuard g;
  Thread t;
  t.runnable = true;  // woken; the busy loop keeps it off the CPU (no run, so no delay yet)
  EXPECT_EQ(g.observe(t.look(0, 0, 0)), QueueClass::Idle);
  EXPECT_EQ(g.observe(t.look(4 * kMs, 0, 0)), QueueClass::Batch);
}

TEST(QueueClass, RunnableAtTwoLooksButServingOrRunInBetweenIsNotStarved) {
  QueueClassGuard g;
  Thread t;
  t.runnable = true;
  g.observe(t.look(0, 0, 0));
  // Serving a request at both looks: outside its wait (even sequence), running.
  t.seq = 4;
  EXPECT_EQ(g.observe(t.look(4 * kMs, 0, 0)), QueueClass::Idle);
  EXPECT_EQ(g.observe(t.look(4 * kMs, 0, 0)), QueueClass::Idle);
  // Looks less than a millisecond apart say nothing.
  t.seq = 5;
  g.observe(t.look(4 * kMs, 0, 0));
  EXPECT_EQ(g.observe(t.look(kMs / 2, 0, 0)), QueueClass::Idle);
  // Asleep in its wait (not runnable) for long: an idle mount.
  t.runnable = false;
  EXPECT_EQ(g.observe(t.look(100 * kMs, 0, 0)), QueueClass::Idle);
  EXPECT_EQ(g.starved(), 0u);
}

TEST(QueueClass, StarvedAgainSoonAfterAHoldDoublesItUpToTheMaximum) {
  QueueClassSettings s;
  s.hold_ns = 1000 * kMs;
  s.max_hold_ns = 4000 * kMs;
  QueueClassGuard g(s);
  Thread t;
  g.observe(t.look(0, 0, 0));
  const int64_t expect[] = {1000, 2000, 4000, 4000};
  for (int64_t hold_ms : expect) {
    ASSERT_EQ(g.observe(t.look(4 * kMs, 1, 4 * kMs)), QueueClass::Batch);
    EXPECT_EQ(g.hold_ns(), hold_ms * kMs);
    ASSERT_EQ(g.observe(t.look(hold_ms * kMs, 1, 10'000)), QueueClass::Idle);
  }
  EXPECT_EQ(g.starved(), 4u);
  // A calm spell longer than twice the hold: the next starvation starts from the base hold.
  EXPECT_EQ(g.observe(t.look(10'000 * kMs, 5, 10'000)), QueueClass::Idle);
  EXPECT_EQ(g.observe(t.look(4 * kMs, 1, 4 * kMs)), QueueClass::Batch);
  EXPECT_EQ(g.hold_ns(), 1000 * kMs);
}

}  // namespace
}  // namespace efuse::accel

// Queue balancing of requests that may block (accel/offload.h), with simulated times.
#include "accel/offload.h"

#include <gtest/gtest.h>

namespace efuse::accel {
namespace {

// Serves `n` FSYNCs that take `inline_ns` inline and `offload_ns` to hand over; returns how
// many were offloaded.
int serve(OffloadPolicy& p, int n, uint64_t inline_ns, uint64_t offload_ns) {
  int off = 0;
  for (int i = 0; i < n; ++i) {
    Choice c = p.choose(Blocking::Fsync, 0);
    Serve s = static_cast<Serve>(c.path);
    off += s == Serve::Offload;
    p.measured(Blocking::Fsync, s, s == Serve::Inline ? inline_ns : offload_ns, 0);
  }
  return off;
}

TEST(OffloadPolicy, FastFsyncStaysInline) {
  OffloadPolicy p;
  // The probe: one each way is enough, a thread start costs 13 times the fsync.
  EXPECT_EQ(serve(p, 2, 3'000, 40'000), 1);
  EXPECT_EQ(p.report().engines[0].phase, Phase::Commit);
  EXPECT_EQ(serve(p, 100, 3'000, 40'000), 0);
  OffloadReport r = p.report();
  EXPECT_EQ(r.engines[0].choice, static_cast<int>(Serve::Inline));
  // The guess for fsync is offload (a handover to a waiting pool thread is cheaper than any
  // flush that has work); the probe found inline cheaper here.
  EXPECT_EQ(r.served[0][1][static_cast<size_t>(Pick::Guess)], 1u);
  EXPECT_EQ(r.served[0][0][static_cast<size_t>(Pick::Probe)], 1u);
  EXPECT_EQ(r.served[0][0][static_cast<size_t>(Pick::Predicted)], 100u);
}

TEST(OffloadPolicy, MetadataKindsStartInlineStorageKindsOffloaded) {
  OffloadPolicy p;
  EXPECT_EQ(p.choose(Blocking::Create, 0).path, static_cast<int>(Serve::Inline));
  EXPECT_EQ(p.choose(Blocking::Setattr, 0).path, static_cast<int>(Serve::Inline));
  EXPECT_EQ(p.choose(Blocking::Fsync, 0).path, static_cast<int>(Serve::Offload));
  EXPECT_EQ(p.choose(Blocking::Fsyncdir, 0).path, static_cast<int>(Serve::Offload));
  EXPECT_EQ(p.choose(Blocking::Fallocate, 0).path, static_cast<int>(Serve::Offload));
}

// A large truncating create on slow storage: the probe's offloaded one started 30 us after
// its handover, the inline one held its queue for 20 ms: the next ones are offloaded.
TEST(OffloadPolicy, SlowCreateMovesOffTheQueueAndAFullPoolIsNotMeasured) {
  OffloadPolicy p;
  Settings s;
  s.probe = 2;
  p.set_settings(s);
  for (int i = 0; i < 4; ++i) {
    Choice c = p.choose(Blocking::Create, i);
    Serve how = static_cast<Serve>(c.path);
    p.measured(Blocking::Create, how, how == Serve::Inline ? 20'000'000 : 30'000, i);
  }
  Choice c = p.choose(Blocking::Create, 10);
  EXPECT_EQ(c.path, static_cast<int>(Serve::Offload));
  EXPECT_EQ(c.pick, Pick::Predicted);
  p.dropped(Blocking::Create, Serve::Offload);  // the pool was full: served inline, unmeasured
  OffloadReport r = p.report();
  const auto& e = r.engines[static_cast<size_t>(Blocking::Create)];
  EXPECT_EQ(e.choice, static_cast<int>(Serve::Offload));
  EXPECT_NEAR(e.predicted[1], 30'000, 1);
}

TEST(OffloadPolicy, SlowFsyncMovesOffTheQueue) {
  OffloadPolicy p;
  serve(p, 8, 5'000'000, 40'000);  // 5 ms on slow storage against a 40 us handover
  EXPECT_EQ(serve(p, 100, 5'000'000, 40'000), 100);
  EXPECT_EQ(p.report().engines[0].choice, static_cast<int>(Serve::Offload));
}

TEST(OffloadPolicy, StorageGettingSlowMovesItOffAgain) {
  OffloadPolicy p;
  serve(p, 108, 3'000, 40'000);
  ASSERT_EQ(p.report().engines[0].choice, static_cast<int>(Serve::Inline));
  // The inline cost drifts far above its prediction: a new probe, and offload wins.
  serve(p, 40, 8'000'000, 40'000);
  OffloadReport r = p.report();
  EXPECT_EQ(r.engines[0].choice, static_cast<int>(Serve::Offload));
  EXPECT_GE(r.engines[0].probes[static_cast<size_t>(ProbeCause::Drift)], 1u);
  // FSYNCDIR has an engine of its own, untouched.
  EXPECT_EQ(r.served[1][0][0] + r.served[1][1][0], 0u);
}

}  // namespace
}  // namespace efuse::accel

// Device or kernel per file (accel/device.h), driven with simulated costs per MiB: what
// efused's reads of a cache epoch cost on each path. No clock, no file system.
#include "accel/device.h"

#include <gtest/gtest.h>

#include <string>

namespace efuse::accel {
namespace {

constexpr off_t kMiB = 1024 * 1024;

uint64_t decisions(const DeviceReport& r, DevPath p, DevReason why) {
  return r.decisions[static_cast<size_t>(p)][static_cast<size_t>(why)];
}

const EngineReport* klass(const DeviceReport& r, const std::string& name) {
  for (const auto& [n, e] : r.classes)
    if (n == name) return &e;
  return nullptr;
}
const EngineReport* klass(DeviceReport&&, const std::string&) = delete;

// One epoch of a file of `size` read whole, at `kernel_ns` or `device_ns` per MiB.
DevPath epoch(DevicePolicy& policy, off_t size, double kernel_ns, double device_ns,
              bool may_probe = true) {
  FileDevice f;
  DevPath p = policy.open(f, size, true, 0, may_probe);
  const double per_mib = p == DevPath::Kernel ? kernel_ns : device_ns;
  for (off_t at = 0; at < size; at += kMiB) {
    const uint64_t n = static_cast<uint64_t>(std::min<off_t>(kMiB, size - at));
    DevicePolicy::served(f, n, static_cast<uint64_t>(per_mib * static_cast<double>(n) / kMiB));
  }
  policy.closed(f, 0);
  return p;
}

Settings quick() {
  Settings s;
  s.probe = 2;
  return s;
}

TEST(DevicePolicy, StartsOnTheKernelPath) {
  DevicePolicy policy;
  FileDevice f;
  EXPECT_EQ(policy.open(f, 100 * kMiB, true, 0), DevPath::Kernel);
  DeviceReport r = policy.report();
  EXPECT_EQ(decisions(r, DevPath::Kernel, DevReason::Guess), 1u);
  ASSERT_EQ(r.classes.size(), 1u);
  EXPECT_EQ(r.classes[0].first, "large_device");
}

TEST(DevicePolicy, LargeColdStreamsGoToTheDeviceWhenItIsCheaper) {
  DevicePolicy policy;
  policy.set_settings(quick());
  // Buffered reads of cold data: the device read plus a copy into the backing page cache
  // and out again (1.5 ms/MiB); O_DIRECT: the device read alone (0.9 ms/MiB).
  int device = 0;
  for (int i = 0; i < 20; ++i) device += epoch(policy, 64 * kMiB, 1.5e6, 0.9e6) == DevPath::Device;
  const DeviceReport r = policy.report();
  const EngineReport* large = klass(r, "large_device");
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(large->choice, static_cast<int>(DevPath::Device));
  EXPECT_NEAR(large->predicted[0], 1.5e6, 1e3);
  EXPECT_NEAR(large->predicted[1], 0.9e6, 1e3);
  EXPECT_GE(device, 17);  // all but the probe's kernel epochs
  EXPECT_GT(decisions(r, DevPath::Device, DevReason::Predicted), 0u);
}

// Within the engine's margin (10 %) a large file's first commit is the device path (no
// second copy of data read once in the backing page cache); a kernel path clearly cheaper
// still wins; small files keep the kernel path on a tie.
TEST(DevicePolicy, OnATieLargeFilesTakeTheDeviceAndSmallOnesTheKernel) {
  auto committed = [](off_t size, double kernel_ns, double device_ns, const char* name) {
    DevicePolicy policy;
    policy.set_settings(quick());
    for (int i = 0; i < 6; ++i) epoch(policy, size, kernel_ns, device_ns);
    const DeviceReport r = policy.report();
    const EngineReport* e = klass(r, name);
    return e == nullptr ? -1 : e->choice;
  };
  const int kernel = static_cast<int>(DevPath::Kernel), device = static_cast<int>(DevPath::Device);
  EXPECT_EQ(committed(64 * kMiB, 0.55e6, 0.58e6, "large_device"), device) << "5 % dearer";
  EXPECT_EQ(committed(64 * kMiB, 0.50e6, 0.60e6, "large_device"), kernel) << "20 % dearer";
  EXPECT_EQ(committed(64 * kMiB, 0.60e6, 0.50e6, "large_device"), device);
  EXPECT_EQ(committed(4 * kMiB, 0.58e6, 0.55e6, "small_device"), kernel) << "5 % cheaper";
  EXPECT_EQ(committed(4 * kMiB, 0.60e6, 0.50e6, "small_device"), device) << "20 % cheaper";
}

// A cache epoch that is itself io_path auto's probe of the cache path (a large file read
// once, tried through the page cache) does not probe the device path as well: it takes the
// kernel path before the class has committed, then the committed path. Its measurement
// counts. Ordinary epochs probe as before.
TEST(DevicePolicy, AnEpochProbingTheCachePathDoesNotProbeTheDevice) {
  DevicePolicy policy;
  policy.set_settings(quick());  // probe 2
  // The device is slower here (a shallow stream against 8 MiB of buffered readahead).
  EXPECT_EQ(epoch(policy, 64 * kMiB, 0.6e6, 2e6), DevPath::Kernel);  // the guess
  EXPECT_EQ(epoch(policy, 64 * kMiB, 0.6e6, 2e6, false), DevPath::Kernel) << "not a probe";
  DeviceReport r = policy.report();
  EXPECT_EQ(decisions(r, DevPath::Kernel, DevReason::Guess), 2u);
  EXPECT_EQ(decisions(r, DevPath::Device, DevReason::Probe), 0u);
  // The held epoch was measured: the kernel path has its two, ordinary epochs probe the device.
  EXPECT_EQ(epoch(policy, 64 * kMiB, 0.6e6, 2e6), DevPath::Device);
  EXPECT_EQ(epoch(policy, 64 * kMiB, 0.6e6, 2e6), DevPath::Device);
  r = policy.report();
  const EngineReport* large = klass(r, "large_device");
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(large->choice, static_cast<int>(DevPath::Kernel));
  EXPECT_EQ(epoch(policy, 64 * kMiB, 0.6e6, 2e6, false), DevPath::Kernel);
  // Where the device is cheaper and committed, a held epoch takes the device.
  DevicePolicy fast;
  fast.set_settings(quick());
  for (int i = 0; i < 4; ++i) epoch(fast, 64 * kMiB, 1.5e6, 0.9e6);
  const DeviceReport fr = fast.report();
  ASSERT_EQ(klass(fr, "large_device")->choice, static_cast<int>(DevPath::Device));
  EXPECT_EQ(epoch(fast, 64 * kMiB, 1.5e6, 0.9e6, false), DevPath::Device);
  EXPECT_EQ(decisions(fast.report(), DevPath::Device, DevReason::Predicted), 1u);
}

TEST(DevicePolicy, SmallHotFilesStayOnTheKernelPath) {
  DevicePolicy policy;
  policy.set_settings(quick());
  // Backing pages cached: a buffered read is a copy (0.2 ms/MiB), O_DIRECT a trip to the
  // device (4 ms/MiB).
  int kernel = 0;
  for (int i = 0; i < 40; ++i) kernel += epoch(policy, 16 * 1024, 0.2e6, 4e6) == DevPath::Kernel;
  const DeviceReport r = policy.report();
  const EngineReport* small = klass(r, "small_device");
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->choice, static_cast<int>(DevPath::Kernel));
  // The probe's one device epoch showed it 20 times dearer: it ended there.
  EXPECT_EQ(kernel, 39);
}

TEST(DevicePolicy, WithoutDirectIoTheKernelPathServesAndSaysWhy) {
  DevicePolicy policy;
  FileDevice f;
  EXPECT_EQ(policy.open(f, 100 * kMiB, false, 0), DevPath::Kernel);
  policy.closed(f, 0);
  const DeviceReport r = policy.report();
  EXPECT_EQ(decisions(r, DevPath::Kernel, DevReason::Unsupported), 1u);
  EXPECT_TRUE(r.classes.empty());  // no engine was asked
}

TEST(DevicePolicy, ARefusedDirectOpenIsCountedAsUnsupportedAndTheClassDoesWithoutIt) {
  DevicePolicy policy;
  policy.set_settings(quick());
  for (int i = 0; i < 6; ++i) {
    FileDevice f;
    DevPath p = policy.open(f, 100 * kMiB, true, 0);
    if (p == DevPath::Device) {
      policy.refused(f, 0);  // the O_DIRECT open failed: served on the kernel path
      p = DevPath::Kernel;
    } else {
      DevicePolicy::served(f, kMiB, 500'000);
    }
    policy.closed(f, 0);
  }
  const DeviceReport r = policy.report();
  EXPECT_EQ(decisions(r, DevPath::Device, DevReason::Probe), 0u);
  EXPECT_GE(decisions(r, DevPath::Kernel, DevReason::Unsupported), 1u);
  const EngineReport* large = klass(r, "large_device");
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(large->choice, static_cast<int>(DevPath::Kernel));
  EXPECT_LT(large->predicted[1], 0);
}

TEST(DevicePolicy, EpochsThatReadLessThanAPageAreNotMeasured) {
  DevicePolicy policy;
  policy.set_settings(quick());
  for (int i = 0; i < 10; ++i) {
    FileDevice f;
    policy.open(f, 1024, true, 0);
    DevicePolicy::served(f, 1024, 1'000'000);
    policy.closed(f, 0);
  }
  const DeviceReport r = policy.report();
  const EngineReport* small = klass(r, "small_device");
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->probe_samples[0] + small->probe_samples[1], 0u);
  EXPECT_EQ(decisions(r, DevPath::Kernel, DevReason::Guess), 10u);
}

}  // namespace
}  // namespace efuse::accel

// bpf::Telemetry start-up: every way the kernel (or the operator) can say no leaves an
// object that says why and reports down; as root on a kernel with the FUSE tracepoints it
// loads, reads its maps, and detaches everything when destroyed.
#include "bpf/telemetry.h"

#include <bpf/bpf.h>
#include <linux/btf.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../testing/temp_dir.h"
#include "bpf/sample_windows.h"

namespace efuse::bpf {
namespace {

TEST(BpfTelemetry, EnvironmentSwitches) {
  setenv("EFUSE_BPF", "0", 1);
  setenv("EFUSE_BPF_SCHED", "off", 1);
  Options o = Options::from_env();
  EXPECT_FALSE(o.enabled);
  EXPECT_FALSE(o.switches);
  setenv("EFUSE_BPF", "1", 1);
  unsetenv("EFUSE_BPF_SCHED");
  o = Options::from_env();
  EXPECT_TRUE(o.enabled);
  EXPECT_TRUE(o.switches);
  unsetenv("EFUSE_BPF");
}

TEST(BpfTelemetry, LevelNames) {
  EXPECT_EQ(parse_level("full"), Level::Full);
  EXPECT_EQ(parse_level("requests"), Level::Requests);
  EXPECT_EQ(parse_level("off"), Level::Off);
  EXPECT_EQ(parse_level("Full"), std::nullopt);
  EXPECT_EQ(parse_level("on"), std::nullopt);
  EXPECT_EQ(parse_level(""), std::nullopt);
  for (Level l : {Level::Off, Level::Requests, Level::Full}) EXPECT_EQ(parse_level(level_name(l)), l);
}

TEST(BpfTelemetry, ConfiguredOffIsDownButNotAFailure) {
  Options o;
  o.level = Level::Off;
  auto t = Telemetry::start(o);
  EXPECT_FALSE(t->up());
  EXPECT_EQ(t->status().load_failures, 0u);
  EXPECT_EQ(t->status().off, kOffDisabled);
  EXPECT_EQ(t->status().level, "off");
  EXPECT_NE(t->status().reason.find("telemetry: off"), std::string::npos) << t->status().reason;
}

TEST(BpfTelemetry, SamplingIsClampedAndReported) {
  Options o;
  o.level = Level::Off;
  o.sample_every = 0;  // the configuration refuses it; the class does not trust that
  auto t = Telemetry::start(o);
  EXPECT_EQ(t->status().sample_every, 1u);
  t->set_sample_every(16);
  EXPECT_EQ(t->status().sample_every, 16u);
  t->set_sample_every(1u << 30);
  EXPECT_EQ(t->status().sample_every, kMaxSampleEvery);
  EXPECT_EQ(Options{}.sample_every, kDefaultSampleEvery);
}

TEST(BpfTelemetry, LevelsChangeLive) {
  if (geteuid() != 0) GTEST_SKIP() << "loading BPF needs root";
  Options o;
  o.level = Level::Requests;
  auto t = Telemetry::start(o);
  if (!t->up()) GTEST_SKIP() << "kernel refused: " << t->status().reason;
  EXPECT_EQ(t->status().level, "requests");
  std::vector<uint32_t> ids = t->program_ids();
  t->set_level(Level::Full);  // no reload: the same programs
  EXPECT_EQ(t->status().level, "full");
  EXPECT_EQ(t->program_ids(), ids);
  t->set_level(Level::Off);
  EXPECT_FALSE(t->up());
  EXPECT_EQ(t->status().level, "off");
  EXPECT_EQ(t->status().off, kOffDisabled);
  EXPECT_TRUE(t->program_ids().empty());
  EXPECT_TRUE(t->snapshot().conns.empty());
  t->set_level(Level::Full);  // loaded again
  EXPECT_TRUE(t->up()) << t->status().reason;
  EXPECT_EQ(t->status().level, "full");
  EXPECT_EQ(t->program_ids().size(), 2u);
  EXPECT_EQ(t->status().load_failures, 0u);
}

TEST(BpfTelemetry, EnvironmentOffWinsOverTheConfiguration) {
  Options o;
  o.enabled = false;  // EFUSE_BPF=0
  auto t = Telemetry::start(o);
  t->set_level(Level::Full);
  EXPECT_FALSE(t->up());
  EXPECT_NE(t->status().reason.find("EFUSE_BPF=0"), std::string::npos) << t->status().reason;
}

TEST(BpfTelemetry, DisabledIsDownButNotAFailure) {
  Options o;
  o.enabled = false;
  auto t = Telemetry::start(o);
  ASSERT_NE(t, nullptr);
  EXPECT_FALSE(t->up());
  EXPECT_EQ(t->status().programs_attached, 0);
  EXPECT_EQ(t->status().load_failures, 0u);
  EXPECT_NE(t->status().reason.find("EFUSE_BPF=0"), std::string::npos);
  EXPECT_TRUE(t->snapshot().conns.empty());
}

TEST(BpfTelemetry, NoKernelBtfIsASkipNotAFailure) {
  Options o;
  o.kernel_btf = "/nonexistent/btf/vmlinux";
  auto t = Telemetry::start(o);
  EXPECT_FALSE(t->up());
  EXPECT_EQ(t->status().load_failures, 0u);
  EXPECT_EQ(t->status().off, kOffUnsupported);
  EXPECT_NE(t->status().reason.find("no BTF"), std::string::npos) << t->status().reason;
}

// Raw BTF as the kernel publishes it in /sys/kernel/btf: a base ("vmlinux") with one int
// and optionally typedefs named `typedefs`, or a split BTF on top of such a base (a module:
// type ids and string offsets continue the base's) with only the typedefs.
std::string raw_btf(const std::vector<std::string>& typedefs, bool with_int,
                    uint32_t base_str_len = 0) {
  std::vector<uint32_t> types;
  std::string strs = base_str_len == 0 ? std::string(1, '\0') : std::string();
  auto name = [&](const std::string& n) {
    uint32_t off = base_str_len + static_cast<uint32_t>(strs.size());
    strs += n;
    strs += '\0';
    return off;
  };
  if (with_int) {  // type 1
    types.insert(types.end(), {name("int"), BTF_KIND_INT << 24, 4});
    types.push_back(BTF_INT_SIGNED << 24 | 32);  // encoding, offset 0, 32 bits
  }
  for (const std::string& t : typedefs) types.insert(types.end(), {name(t), BTF_KIND_TYPEDEF << 24, 1});
  struct btf_header h {};
  h.magic = BTF_MAGIC;
  h.version = BTF_VERSION;
  h.hdr_len = sizeof h;
  h.type_off = 0;
  h.type_len = static_cast<uint32_t>(types.size() * sizeof(uint32_t));
  h.str_off = h.type_len;
  h.str_len = static_cast<uint32_t>(strs.size());
  std::string out(reinterpret_cast<const char*>(&h), sizeof h);
  out.append(reinterpret_cast<const char*>(types.data()), h.type_len);
  return out + strs;
}

constexpr uint32_t kBaseStrLen = 5;  // "\0int\0"
const std::vector<std::string> kTraceTypedefs = {"btf_trace_fuse_request_send",
                                                 "btf_trace_fuse_request_end"};

TEST(BpfTelemetry, FindsTheFuseTracepointsInVmlinuxBtf) {
  testing::TempDir d;
  ASSERT_TRUE(testing::write_file(d / "vmlinux", raw_btf(kTraceTypedefs, true)));
  std::string reason;
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason), "vmlinux") << reason;
}

TEST(BpfTelemetry, FindsTheFuseTracepointsInTheFuseModulesBtf) {
  // FUSE as a module: vmlinux's BTF has no FUSE types, the module's (split) BTF has them.
  testing::TempDir d;
  ASSERT_EQ(raw_btf({}, true).size(), sizeof(btf_header) + 16 + kBaseStrLen);
  ASSERT_TRUE(testing::write_file(d / "vmlinux", raw_btf({}, true)));
  ASSERT_TRUE(testing::write_file(d / "fuse", raw_btf(kTraceTypedefs, false, kBaseStrLen)));
  std::string reason;
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason), "fuse module") << reason;
}

TEST(BpfTelemetry, NoFuseTracepointsSaysWhereItLooked) {
  testing::TempDir d;
  ASSERT_TRUE(testing::write_file(d / "vmlinux", raw_btf({}, true)));
  std::string reason;
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason), "");
  EXPECT_NE(reason.find("no fuse_request_send tracepoint"), std::string::npos) << reason;
  EXPECT_NE(reason.find("Linux 6.12"), std::string::npos) << reason;
  EXPECT_NE(reason.find(d / "fuse"), std::string::npos) << reason;
  // A module without them (a kernel older than the tracepoints) is no better.
  ASSERT_TRUE(testing::write_file(d / "fuse", raw_btf({"btf_trace_fuse_request_send"}, false,
                                                      kBaseStrLen)));
  reason.clear();
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason), "");
  EXPECT_NE(reason.find("no fuse_request_send tracepoint"), std::string::npos) << reason;
  // Unreadable module BTF says so.
  ASSERT_TRUE(testing::write_file(d / "fuse", "not BTF"));
  reason.clear();
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason), "");
  EXPECT_NE(reason.find("cannot read the fuse module's BTF"), std::string::npos) << reason;
}

TEST(BpfTelemetry, KernelWithoutFuseTracepointsIsASkipNotAFailure) {
  // Debian's 6.1: BTF, but no fuse_request_send/end. efused serves without telemetry and
  // efuse_bpf_load_failures_total stays 0: nothing was refused.
  testing::TempDir d;
  ASSERT_TRUE(testing::write_file(d / "vmlinux", raw_btf({}, true)));
  Options o;
  o.kernel_btf = d / "vmlinux";
  auto t = Telemetry::start(o);
  EXPECT_FALSE(t->up());
  EXPECT_EQ(t->status().load_failures, 0u);
  EXPECT_EQ(t->status().off, kOffUnsupported);
  EXPECT_NE(t->status().reason.find("no fuse_request_send tracepoint"), std::string::npos)
      << t->status().reason;
  bool lacks = false;
  std::string reason;
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason, &lacks), "");
  EXPECT_TRUE(lacks);
  // Unreadable module BTF is not "the kernel lacks them": that one counts.
  ASSERT_TRUE(testing::write_file(d / "fuse", "not BTF"));
  EXPECT_EQ(find_fuse_tracepoints(d / "vmlinux", &reason, &lacks), "");
  EXPECT_FALSE(lacks);
  EXPECT_EQ(Telemetry::start(o)->status().load_failures, 1u);
}

TEST(BpfMatchCheck, HealthyTrafficPasses) {
  MatchCheck c;
  // Starts taken back as their requests end, a few still in flight at each look.
  for (uint64_t n = 100; n <= 100000; n += 100) EXPECT_EQ(c.observe(n, n - 3), "") << n;
  // Up to a quarter of a window never taken back is tolerated.
  EXPECT_EQ(c.observe(101000, 100000 - 3 + 750), "");
}

TEST(BpfMatchCheck, TripsWhenEndsStopFindingTheirSends) {
  MatchCheck c;
  EXPECT_EQ(c.observe(5000, 4998), "");  // healthy window
  // Debian 6.12 with the old (connection, unique) key: no end finds its send.
  EXPECT_EQ(c.observe(5500, 4998), "");  // window not full yet: no verdict on 500 starts
  std::string v = c.observe(7000, 4999);
  EXPECT_NE(v.find("sends and ends stopped matching"), std::string::npos) << v;
  EXPECT_NE(v.find("1999 of the last 2000"), std::string::npos) << v;
}

TEST(BpfMatchCheck, JudgesEachWindowOnItsOwn) {
  MatchCheck c;
  EXPECT_EQ(c.observe(900, 0), "");  // 900 starts, none back yet: not a window yet
  // The next look: 10,000 filed, 9,100 taken back: 9 % missing, fine.
  EXPECT_EQ(c.observe(10000, 9100), "");
  // Starts in flight at one look and taken at the next count for the next window, never
  // more than the window holds.
  EXPECT_EQ(c.observe(11000, 11000), "");
  // The next window is judged from there: 1,000 filed, 300 taken.
  EXPECT_NE(c.observe(12000, 11300), "");
  // A total that went backwards (never expected) restarts rather than misjudges.
  EXPECT_EQ(c.observe(10, 10), "");
  EXPECT_EQ(c.observe(1010, 1000), "");
}

TEST(BpfInflightIndex, SlabNeighboursSpreadOverTheSlots) {
  // fuse_reqs are slab objects a few hundred bytes apart; the slot indexes of 4,096
  // neighbours must spread like random keys (which use 1 - 1/e = 63 % of the slots), not
  // pile up (a collision only costs a trip to the inflight hash).
  for (uint64_t stride : {192u, 256u, 320u, 512u}) {
    std::vector<bool> used(EFUSE_BPF_INFLIGHT_SLOTS);
    size_t distinct = 0;
    for (uint64_t i = 0; i < EFUSE_BPF_INFLIGHT_SLOTS; ++i) {
      uint32_t idx = efuse_inflight_index(0xffff888100000000ULL + i * stride);
      ASSERT_LT(idx, EFUSE_BPF_INFLIGHT_SLOTS);
      if (!used[idx]) ++distinct;
      used[idx] = true;
    }
    EXPECT_GT(distinct, EFUSE_BPF_INFLIGHT_SLOTS * 58 / 100) << "stride " << stride;
  }
}

// When the send program is attached (sample_windows.h), driven with chosen draws: exact,
// no clock, no kernel.
TEST(BpfSampleWindows, OneKeepsTheSendProgramAttached) {
  EXPECT_TRUE(SampleWindows::always(1));
  EXPECT_FALSE(SampleWindows::always(2));
  EXPECT_EQ(SampleWindows::gap(1, 0.7).count(), 0);
}

TEST(BpfSampleWindows, WindowsCoverOneInEveryOfTheTimeOnAverage) {
  using std::chrono::microseconds;
  const int64_t w = std::chrono::duration_cast<microseconds>(SampleWindows::kWindow).count();
  for (uint32_t every : {2u, 4u, 16u, 100u, 65536u}) {
    // The gap runs from half to one and a half times (every - 1) windows...
    EXPECT_EQ(SampleWindows::gap(every, 0.0).count(), (every - 1) * w / 2) << every;
    EXPECT_EQ(SampleWindows::gap(every, 1.0).count(), (every - 1) * w * 3 / 2) << every;
    // ...so that over uniform draws a window is 1 in `every` of the time.
    double gaps = 0;
    const int n = 1000;
    for (int i = 0; i < n; ++i) gaps += SampleWindows::gap(every, (i + 0.5) / n).count();
    const double share = static_cast<double>(w) / (w + gaps / n);
    EXPECT_NEAR(share * every, 1.0, 1e-3) << every;
  }
  // Draws outside [0, 1) are clamped, never a negative or runaway gap.
  EXPECT_EQ(SampleWindows::gap(16, -3.0), SampleWindows::gap(16, 0.0));
  EXPECT_EQ(SampleWindows::gap(16, 7.0), SampleWindows::gap(16, 1.0));
}

TEST(BpfConnSlots, ConnectionIdsSpreadOverTheSlots) {
  // Anonymous device numbers (major 0) are handed out in order: neighbours must land on
  // different slots so that a host's mounts each get an array slot, not the spill hash.
  std::vector<int> used(EFUSE_BPF_CONN_SLOTS);
  for (uint32_t minor = 40; minor < 40 + EFUSE_BPF_CONN_SLOTS / 2; ++minor)
    ++used[efuse_conn_hash(minor)];
  int distinct = 0;
  for (int n : used) distinct += n > 0;
  EXPECT_GE(distinct, static_cast<int>(EFUSE_BPF_CONN_SLOTS / 2) * 3 / 4);
}

TEST(BpfTelemetry, UnprivilegedIsDownWithTheReason) {
  // In a child that drops to an unprivileged user (when we are root), or as we are.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipefd[0]);
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(2);
    auto t = Telemetry::start(Options{});
    std::string msg = (t->up() ? "up " : "down ") + std::to_string(t->status().load_failures) +
                      " " + t->status().reason;
    ssize_t n = write(pipefd[1], msg.data(), msg.size());
    _exit(n == static_cast<ssize_t>(msg.size()) ? 0 : 3);
  }
  close(pipefd[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(msg.rfind("down 1 ", 0), 0u) << msg;  // refused: that one counts
  EXPECT_NE(msg.find("root"), std::string::npos) << msg;  // says what it would need
}

TEST(BpfTelemetry, LoadsAttachesAndDetachesOnDestruction) {
  if (geteuid() != 0) GTEST_SKIP() << "loading BPF needs root";
  auto t = Telemetry::start(Options{});
  if (!t->up()) {
    // Not this test's business to require a BPF-capable kernel; the integration test
    // (tests/integration/test_bpf_telemetry.py) fails under CI=true when it cannot load.
    GTEST_SKIP() << "kernel refused: " << t->status().reason;
  }
  EXPECT_EQ(t->status().programs_attached, Telemetry::kProgramCount);
  EXPECT_EQ(t->status().load_failures, 0u);
  EXPECT_TRUE(t->status().reason.empty()) << t->status().reason;
  std::string reason;
  EXPECT_EQ(t->status().tracepoints, find_fuse_tracepoints(Options{}.kernel_btf, &reason));
  std::vector<uint32_t> ids = t->program_ids();
  ASSERT_EQ(ids.size(), 2u);
  for (uint32_t id : ids) {
    int fd = bpf_prog_get_fd_by_id(id);
    EXPECT_GE(fd, 0) << "program " << id << " not loaded";
    if (fd >= 0) close(fd);
  }
  (void)t->snapshot();  // reading maps works (whatever FUSE traffic there is)
  t.reset();
  // The kernel frees a program after an RCU grace period once its last link and fd are
  // gone: poll (bounded) until none of the ids resolves.
  auto loaded = [&ids] {
    int n = 0;
    for (uint32_t id : ids) {
      int fd = bpf_prog_get_fd_by_id(id);
      if (fd >= 0) {
        ++n;
        close(fd);
      }
    }
    return n;
  };
  for (int i = 0; i < 500 && loaded() > 0; ++i) usleep(10 * 1000);
  EXPECT_EQ(loaded(), 0) << "programs still loaded 5 s after the Telemetry was destroyed";
}

TEST(BpfTelemetry, NothingRunsOnContextSwitches) {
  // Context switches are read from the threads' own counters at send and end: no program
  // is attached to sched_switch, whose cost every thread of the host would pay.
  if (geteuid() != 0) GTEST_SKIP() << "loading BPF needs root";
  auto t = Telemetry::start(Options{});
  if (!t->up()) GTEST_SKIP() << "kernel refused: " << t->status().reason;
  for (uint32_t id : t->program_ids()) {
    int fd = bpf_prog_get_fd_by_id(id);
    ASSERT_GE(fd, 0);
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    ASSERT_EQ(bpf_obj_get_info_by_fd(fd, &info, &len), 0);
    close(fd);
    EXPECT_EQ(std::string(info.name).find("sched"), std::string::npos) << info.name;
  }
  EXPECT_EQ(t->program_ids().size(), 2u);
}

}  // namespace
}  // namespace efuse::bpf

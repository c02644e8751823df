#include "bpf/telemetry.h"

#include <sys/mman.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "bpf/layout.h"
#include "bpf/libbpf_log.h"
#include "bpf/maps.h"
#include "bpf/mountinfo.h"
#include "bpf/sample_windows.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/system.h"
#include "efuse_telemetry.skel.h"

namespace efuse::bpf {
namespace {

// Sampled requests' starts older than this are dropped: requests whose end the kernel never
// traces (a killed client's request still pending in the queue) would otherwise keep a slot
// or an inflight entry, and keep the ends of requests not sampled looking in the hash. A
// live request that waits longer (a lock) only loses its latency sample: it is counted
// either way.
constexpr uint64_t kStaleInflightNs = 600ULL * 1000 * 1000 * 1000;
constexpr size_t kSlotsBytes = sizeof(efuse_inflight_slot) * EFUSE_BPF_INFLIGHT_SLOTS;
constexpr size_t kBucketsBytes = sizeof(efuse_sample_bucket) * EFUSE_BPF_SAMPLE_BUCKETS;

bool env_off(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  return std::strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
         strcasecmp(v, "no") == 0;
}

// Effective capability bits from /proc/self/status (CapEff), 0 when unreadable.
uint64_t effective_caps() {
  FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long caps = 0;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::sscanf(line, "CapEff: %llx", &caps) == 1) break;
  std::fclose(f);
  return caps;
}

// Whether this process lives in the initial user namespace (capabilities count for BPF
// only there): its uid_map is the identity over all ids.
bool initial_user_namespace() {
  FILE* f = std::fopen("/proc/self/uid_map", "re");
  if (f == nullptr) return true;
  unsigned long long inside = 1, outside = 1, count = 0;
  int n = std::fscanf(f, "%llu %llu %llu", &inside, &outside, &count);
  std::fclose(f);
  return n == 3 && inside == 0 && outside == 0 && count == 4294967295ULL;
}

// Why the kernel said EPERM/EACCES to bpf(), from what this process may do, with what the
// operator can change. (libbpf's own hints at this point are about RLIMIT_MEMLOCK, which
// does not apply: kernels with the FUSE tracepoints charge BPF memory to the memory cgroup;
// libbpf only falls back to that advice because its probe for it was refused too.)
std::string permission_text() {
  constexpr int kCapSysAdmin = 21, kCapPerfmon = 38, kCapBpf = 39;
  uint64_t caps = effective_caps();
  auto has = [caps](int cap) { return (caps >> cap) & 1; };
  bool privileged = has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon));
  std::string who = geteuid() == 0 ? "root" : "uid " + std::to_string(geteuid());
  if (!initial_user_namespace())
    return "efused runs in a user namespace (a container?) and BPF needs CAP_BPF and "
           "CAP_PERFMON (or CAP_SYS_ADMIN) in the initial one: run efused on the host, or set "
           "EFUSE_BPF=0 to not try; RLIMIT_MEMLOCK is not the cause";
  if (!privileged)
    return "efused runs as " + who + " without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) in "
           "its effective capabilities: " +
           (geteuid() == 0 ? std::string("let it keep them (the systemd unit's "
                                         "CapabilityBoundingSet lists them)")
                           : std::string("run it as root, or grant it CAP_BPF and CAP_PERFMON")) +
           ", or set EFUSE_BPF=0 to not try; RLIMIT_MEMLOCK is not the cause";
  if (efuse::seccomp_filtered())
    return "efused has the capabilities, but a seccomp filter refuses bpf() (systemd-nspawn's "
           "default filter, or SystemCallFilter=): allow bpf and perf_event_open (nspawn: "
           "--system-call-filter='bpf perf_event_open'), or set EFUSE_BPF=0 to not try; "
           "RLIMIT_MEMLOCK is not the cause";
  return "efused has the capabilities and no seccomp filter, so a security module (lockdown, "
         "SELinux, AppArmor) refused bpf(); RLIMIT_MEMLOCK is not the cause";
}

std::string errno_text(int err) {
  if (err < 0) err = -err;
  std::string s = std::strerror(err);
  if (err == EPERM || err == EACCES) s += " (" + permission_text() + ")";
  return s;
}

bool has_tracepoints(const struct btf* btf) {
  for (const char* tp : kFuseTracepoints) {
    std::string type = std::string("btf_trace_") + tp;
    if (btf__find_by_name_kind(btf, type.c_str(), BTF_KIND_TYPEDEF) < 0) return false;
  }
  return true;
}

}  // namespace

// Cheap checks with clear answers before libbpf's more cryptic ones. FUSE built in: its
// tracepoints are in vmlinux's BTF. FUSE as a module: in the module's, which the kernel
// publishes next to vmlinux's once the module is loaded; libbpf then attaches to the
// module's tracepoints and relocates against its types by itself.
std::string find_fuse_tracepoints(const std::string& kernel_btf, std::string* reason,
                                  bool* kernel_lacks) {
  bool lacks_dummy = false;
  if (kernel_lacks == nullptr) kernel_lacks = &lacks_dummy;
  *kernel_lacks = false;
  if (access(kernel_btf.c_str(), R_OK) != 0) {
    *kernel_lacks = errno == ENOENT;
    *reason = "kernel has no BTF (" + kernel_btf + ": " + std::strerror(errno) +
              "); CO-RE programs need CONFIG_DEBUG_INFO_BTF";
    return {};
  }
  struct btf* base = btf__parse(kernel_btf.c_str(), nullptr);
  if (base == nullptr) {
    *reason = "cannot read kernel BTF " + kernel_btf + ": " + errno_text(errno);
    return {};
  }
  std::string where;
  if (has_tracepoints(base)) where = "vmlinux";
  const std::string dir = kernel_btf.substr(0, kernel_btf.rfind('/') + 1);
  const std::string module = dir + "fuse";
  if (where.empty() && access(module.c_str(), F_OK) != 0 && dir == "/sys/kernel/btf/") {
    // FUSE as a module that nothing has loaded yet: opening the device loads it.
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd >= 0) close(fd);
  }
  if (where.empty() && access(module.c_str(), R_OK) == 0) {
    struct btf* split = btf__parse_split(module.c_str(), base);
    if (split == nullptr) {
      *reason = "cannot read the fuse module's BTF " + module + ": " + errno_text(errno);
      btf__free(base);
      return {};
    }
    if (has_tracepoints(split)) where = "fuse module";
    btf__free(split);
  }
  btf__free(base);
  if (where.empty()) *kernel_lacks = true;
  if (where.empty())
    *reason = std::string("kernel has no ") + kFuseTracepoints[0] +
              " tracepoint (FUSE tracepoints need Linux 6.12 or later; looked in " + kernel_btf +
              " and, for FUSE as a module, " + module + ")";
  return where;
}

Options Options::from_env() {
  Options o;
  o.enabled = !env_off("EFUSE_BPF");
  o.switches = !env_off("EFUSE_BPF_SCHED");
  const char* mismatch = std::getenv("EFUSE_BPF_TEST_MISMATCH");
  o.test_mismatch = mismatch != nullptr && std::strcmp(mismatch, "1") == 0;
  return o;
}

std::string MatchCheck::observe(uint64_t filed, uint64_t taken) {
  // Totals only grow; a smaller one (never expected) restarts the window.
  if (filed < base_filed_ || taken < base_taken_) {
    base_filed_ = filed;
    base_taken_ = taken;
    return {};
  }
  const uint64_t window = filed - base_filed_;
  if (window < kWindow) return {};
  // Starts filed in an earlier window and taken in this one count here: at most `window`.
  const uint64_t good = std::min(taken - base_taken_, window), bad = window - good;
  base_filed_ = filed;
  base_taken_ = taken;
  if (bad * 4 <= window) return {};
  return "sends and ends stopped matching: " + std::to_string(bad) + " of the last " +
         std::to_string(window) +
         " timed requests were never seen ending (their ends did not find their sends; this "
         "kernel's FUSE tracepoints do not behave as efused expects)";
}

Status Telemetry::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

bool Telemetry::open_window() const {
  if (!skel_ || !status_.up) return false;
  if (skel_->links.efuse_request_send != nullptr) return true;
  bpf_link* link = bpf_program__attach(skel_->progs.efuse_request_send);
  if (link == nullptr) {
    if (!window_failure_logged_)
      LOG_WARN("bpf: cannot attach fuse_request_send for a sampling window (%s): requests "
               "are counted, not timed, until it attaches again",
               errno_text(errno).c_str());
    window_failure_logged_ = true;
    return false;
  }
  skel_->links.efuse_request_send = link;  // efuse_telemetry_bpf__destroy() detaches it
  ++status_.sample_windows;
  return true;
}

void Telemetry::close_window() const {
  if (!skel_ || skel_->links.efuse_request_send == nullptr) return;
  bpf_link__destroy(skel_->links.efuse_request_send);
  skel_->links.efuse_request_send = nullptr;
}

void Telemetry::run_windows() {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> draw(0.0, 1.0);
  std::unique_lock<std::mutex> lock(mu_);
  while (!windows_stop_) {
    const uint32_t every = opts_.sample_every;
    auto changed = [&] { return windows_stop_ || !status_.up || opts_.sample_every != every; };
    if (!status_.up) {
      windows_cv_.wait(lock, [&] { return windows_stop_ || status_.up; });
      continue;
    }
    if (SampleWindows::always(every)) {  // load() attached it; it stays until `every` changes
      (void)open_window();
      windows_cv_.wait(lock, changed);
      continue;
    }
    close_window();
    if (windows_cv_.wait_for(lock, SampleWindows::gap(every, draw(rng)), changed)) continue;
    (void)open_window();
    (void)windows_cv_.wait_for(lock, SampleWindows::kWindow, changed);
    close_window();
  }
}

const char* level_name(Level level) {
  switch (level) {
    case Level::Off: return "off";
    case Level::Requests: return "requests";
    case Level::Full: return "full";
  }
  return "off";
}

std::optional<Level> parse_level(std::string_view text) {
  for (Level l : {Level::Full, Level::Requests, Level::Off})
    if (text == level_name(l)) return l;
  return std::nullopt;
}

Level Telemetry::effective(const Options& opts) {
  if (!opts.enabled) return Level::Off;
  if (opts.level == Level::Full && !opts.switches) return Level::Requests;
  return opts.level;
}

std::unique_ptr<Telemetry> Telemetry::start(const Options& opts) {
  std::unique_ptr<Telemetry> t(new Telemetry());
  std::lock_guard<std::mutex> lock(t->mu_);
  t->opts_ = opts;
  t->opts_.sample_every = std::clamp<uint32_t>(opts.sample_every, 1, kMaxSampleEvery);
  t->status_.sample_every = t->opts_.sample_every;
  std::string why;
  t->fusectl_ = FuseCtl::open(&why);
  if (!why.empty())
    LOG_WARN("bpf: no efuse_kernel_requests_in_flight: %s; dead connections' series are kept",
             why.c_str());
  t->attach();
  Telemetry* self = t.get();
  t->windows_ = std::thread([self] { self->run_windows(); });
  return t;
}

void Telemetry::attach() {
  status_.level = level_name(Level::Off);
  const Level level = effective(opts_);
  if (level == Level::Off) {
    status_.reason = opts_.enabled ? "disabled by the configuration (telemetry: off)"
                                   : "disabled by EFUSE_BPF=0";
    status_.off = kOffDisabled;
    LOG_INFO("bpf: telemetry off: %s", status_.reason.c_str());
    return;
  }
  route_libbpf_log();
  (void)take_first_libbpf_warning();
  std::string reason;
  bool loaded = false, kernel_lacks = false;
  try {
    loaded = load(opts_, &reason, &kernel_lacks);
  } catch (const std::exception& e) {  // bad_alloc while building messages
    reason = e.what();
  }
  if (!loaded) {
    skel_.reset();
    // A kernel without BTF or FUSE tracepoints (Linux < 6.12) is a clean skip, not a
    // failure: nothing was refused, there is nothing to attach to.
    status_ = Status{false, 0, status_.load_failures + (kernel_lacks ? 0 : 1), reason,
                     "", kernel_lacks ? kOffUnsupported : kOffRefused, level_name(Level::Off),
                     opts_.sample_every};
    LOG_WARN("bpf: telemetry off: %s; serving mounts without kernel-side metrics",
             reason.c_str());
    return;
  }
  status_.reason.clear();
  status_.off.clear();
  status_.level = level_name(level);
  std::string ids;
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict for
  // `"," + std::to_string(id)` (operator+(const char*, string&&)).
  for (uint32_t id : ids_locked()) {
    if (!ids.empty()) ids += ',';
    ids += std::to_string(id);
  }
  LOG_INFO("bpf: telemetry on: level %s, every request counted, timed in sampling windows "
           "covering 1 in %u of the time, %d programs (fuse_request_end attached, "
           "fuse_request_send in the windows; bpftool prog show id %s; FUSE tracepoints from "
           "%s BTF)",
           status_.level.c_str(), opts_.sample_every, status_.programs_attached, ids.c_str(),
           status_.tracepoints.c_str());
}

void Telemetry::detach() const {
  if (slots_map_ != nullptr) munmap(slots_map_, kSlotsBytes);
  if (buckets_map_ != nullptr) munmap(buckets_map_, kBucketsBytes);
  slots_map_ = buckets_map_ = nullptr;
  skel_.reset();  // detaches the programs
  status_.up = false;
  status_.programs_attached = 0;
  status_.level = level_name(Level::Off);
}

void Telemetry::set_level(Level level) {
  std::lock_guard<std::mutex> lock(mu_);
  const Level before = effective(opts_);
  opts_.level = level;
  const Level after = effective(opts_);
  if (after == before) return;
  if (status_.up) {
    if (after == Level::Off) {
      detach();
      status_.reason = "disabled by the configuration (telemetry: off)";
      status_.off = kOffDisabled;
      LOG_INFO("bpf: telemetry off: %s; programs detached", status_.reason.c_str());
      return;
    }
    // requests <-> full: the programs read the level on every event; nothing reloads.
    skel_->data->level = after == Level::Full ? EFUSE_BPF_LEVEL_FULL : EFUSE_BPF_LEVEL_REQUESTS;
    __atomic_add_fetch(&skel_->bss->level_gen, 1, __ATOMIC_RELEASE);
    status_.level = level_name(after);
    LOG_INFO("bpf: telemetry level %s (was %s)", level_name(after), level_name(before));
    return;
  }
  // Down: only a telemetry the operator turned off is started again; one the kernel
  // cannot run (unsupported, refused) or that failed its self-check stays off until
  // efused restarts.
  if (status_.off == kOffDisabled) attach();
  windows_cv_.notify_all();
}

void Telemetry::set_sample_every(uint32_t every) {
  every = std::clamp<uint32_t>(every, 1, kMaxSampleEvery);
  std::lock_guard<std::mutex> lock(mu_);
  if (every == opts_.sample_every) return;
  const uint32_t before = opts_.sample_every;
  opts_.sample_every = every;
  status_.sample_every = every;
  // 1 in 1 takes effect before the reload returns; otherwise the next window (or gap)
  // follows the new rate.
  if (SampleWindows::always(every)) (void)open_window();
  windows_cv_.notify_all();
  LOG_INFO("bpf: telemetry sampling windows cover 1 in %u of the time (was 1 in %u)", every,
           before);
}

bool Telemetry::load(const Options& opts, std::string* reason, bool* kernel_lacks) {
  status_.tracepoints = find_fuse_tracepoints(opts.kernel_btf, reason, kernel_lacks);
  if (status_.tracepoints.empty()) return false;

  skel_ = TelemetrySkeleton::open();
  if (!skel_) {
    *reason = std::string("cannot open the BPF object: ") + errno_text(errno);
    return false;
  }
  std::string layout_error;
  if (!check_layout(skel_.object(), kTelemetryMaps, &layout_error)) {
    *reason = "refusing to load: " + layout_error;
    return false;
  }
  // Any odd offset: no fuse_req lives there, so no end finds the send.
  skel_->data->test_send_key_skew = opts.test_mismatch ? 1 : 0;
  skel_->data->level =
      effective(opts) == Level::Full ? EFUSE_BPF_LEVEL_FULL : EFUSE_BPF_LEVEL_REQUESTS;

  int err = efuse_telemetry_bpf__load(skel_.get());
  if (err != 0) {
    std::string why = "load: " + errno_text(err);
    std::string libbpf = take_first_libbpf_warning();
    // A refused bpf() is explained above; libbpf's lines then only add its generic
    // "failed to load object".
    if (!libbpf.empty() && err != -EPERM && err != -EACCES) why += " (libbpf: " + libbpf + ")";
    *reason = why;
    return false;
  }
  struct Prog {
    bpf_program* prog;
    bpf_link** link;
  };
  // The end program counts every request: attached for as long as the telemetry runs. The
  // send program is attached in sampling windows (run_windows), or for good at 1 in 1;
  // attached here either way, so that a kernel refusing it says so now.
  Prog progs[] = {
      {skel_->progs.efuse_request_send, &skel_->links.efuse_request_send},
      {skel_->progs.efuse_request_end, &skel_->links.efuse_request_end},
  };
  for (Prog& p : progs) {
    bpf_link* link = bpf_program__attach(p.prog);
    if (link == nullptr) {
      *reason = std::string("attach ") + bpf_program__name(p.prog) + ": " + errno_text(errno);
      return false;  // skel_.reset() in start() detaches what was attached
    }
    *p.link = link;  // efuse_telemetry_bpf__destroy() detaches it
  }
  if (SampleWindows::always(opts.sample_every)) {
    ++status_.sample_windows;
  } else {  // the first window opens after a gap
    bpf_link__destroy(skel_->links.efuse_request_send);
    skel_->links.efuse_request_send = nullptr;
  }
  int slots_fd = bpf_map__fd(skel_->maps.inflight_slots);
  void* m = mmap(nullptr, kSlotsBytes, PROT_READ | PROT_WRITE, MAP_SHARED, slots_fd, 0);
  if (m == MAP_FAILED) {
    *reason = "cannot map inflight_slots: " + errno_text(errno);
    return false;
  }
  slots_map_ = m;
  m = mmap(nullptr, kBucketsBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
           bpf_map__fd(skel_->maps.sampled), 0);
  if (m == MAP_FAILED) {
    *reason = "cannot map sampled: " + errno_text(errno);
    return false;
  }
  buckets_map_ = m;
  status_.up = true;
  status_.programs_attached = kProgramCount;  // loaded and in service, send in the windows
  return true;
}

std::vector<uint32_t> Telemetry::program_ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ids_locked();
}

std::vector<uint32_t> Telemetry::ids_locked() const {
  std::vector<uint32_t> ids;
  if (!skel_ || !status_.up) return ids;
  for (bpf_program* p : {skel_->progs.efuse_request_send, skel_->progs.efuse_request_end}) {
    int fd = bpf_program__fd(p);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) ids.push_back(info.id);
  }
  return ids;
}

void Telemetry::withdraw(const std::string& verdict) const {
  detach();
  status_.reason = verdict;
  status_.off = kOffMismatch;
  LOG_WARN("bpf: telemetry off: %s; programs detached, kernel-side metrics withdrawn "
           "(efuse_bpf_up 0) rather than served wrong", verdict.c_str());
}

Telemetry::~Telemetry() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    windows_stop_ = true;
  }
  windows_cv_.notify_all();
  if (windows_.joinable()) windows_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (slots_map_ != nullptr) munmap(slots_map_, kSlotsBytes);
  if (buckets_map_ != nullptr) munmap(buckets_map_, kBucketsBytes);
  skel_.reset();
}

std::span<efuse_inflight_slot> Telemetry::slots() const {
  if (slots_map_ == nullptr) return {};
  return {static_cast<efuse_inflight_slot*>(slots_map_), EFUSE_BPF_INFLIGHT_SLOTS};
}

// A slot's request address, loaded as the BPF programs' atomic exchanges publish it.
static uint64_t slot_req(const efuse_inflight_slot& s) {
  return __atomic_load_n(&s.req, __ATOMIC_ACQUIRE);
}

// One start fewer in its bucket (efuse_telemetry.h, `sampled`): the programs do the same
// for the starts they remove.
void Telemetry::uncount_start(const efuse_req_start& start) const {
  if (buckets_map_ == nullptr) return;
  auto* b = static_cast<efuse_sample_bucket*>(buckets_map_) +
            efuse_sample_bucket_of(start.nodeid, start.pid, start.opcode);
  __atomic_sub_fetch(&b->starts, 1, __ATOMIC_ACQ_REL);
}

// Empties a slot whose request will never end (its connection is gone, or it is older than
// kStaleInflightNs), unless it changed meanwhile: the programs claim a slot with a
// compare-and-swap too, so exactly one of them or this removes (and uncounts) a start.
void Telemetry::drop_slot(efuse_inflight_slot& s, uint64_t req,
                          const efuse_req_start& start) const {
  if (__atomic_compare_exchange_n(&s.req, &req, EFUSE_BPF_SLOT_FREE, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_RELAXED))
    uncount_start(start);
}

// The exact counters: every claimed connection slot's ranges of counts and queue_counts
// (one batch read each), and the spill hash.
void Telemetry::read_counts(Snapshot& snap, size_t ncpu) const {
  const int slots_fd = bpf_map__fd(skel_->maps.conn_slots);
  auto read_range = [ncpu](int fd, uint32_t first, uint32_t n,
                           const std::function<void(uint32_t i, const efuse_counts&)>& fn) {
    std::vector<uint32_t> keys(n);
    std::vector<efuse_counts> values(static_cast<size_t>(n) * ncpu);
    uint32_t count = n, prev = first - 1;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int err = bpf_map_lookup_batch(fd, first == 0 ? nullptr : &prev, &prev, keys.data(),
                                   values.data(), &count, &opts);
    if (err != 0 && errno != ENOENT) {  // ENOENT: the last batch of the map
      // A kernel that cannot batch: one lookup per key.
      for (uint32_t k = 0; k < n; ++k) {
        uint32_t key = first + k;
        efuse_counts sum{};
        if (lookup_percpu_sum(fd, &key, ncpu, &sum)) fn(k, sum);
      }
      return;
    }
    for (uint32_t k = 0; k < count && k < n; ++k) {
      if (keys[k] < first || keys[k] >= first + n) continue;
      efuse_counts sum{};
      for (size_t cpu = 0; cpu < ncpu; ++cpu) accumulate(sum, values[k * ncpu + cpu]);
      fn(keys[k] - first, sum);
    }
  };
  for (uint32_t i = 0; i < EFUSE_BPF_CONN_SLOTS; ++i) {
    uint32_t conn = EFUSE_BPF_CONN_FREE;
    if (lookup_raw(slots_fd, &i, &conn) != 0 || conn == EFUSE_BPF_CONN_FREE) continue;
    ConnSnapshot& c = snap.conns[conn];
    read_range(bpf_map__fd(skel_->maps.counts), i * EFUSE_BPF_OPCODE_SLOTS,
               EFUSE_BPF_OPCODE_SLOTS, [&](uint32_t opcode, const efuse_counts& v) {
                 if (v.ended != 0) accumulate(c.counts[opcode], v);
               });
    read_range(bpf_map__fd(skel_->maps.queue_counts), i * EFUSE_BPF_QUEUE_SLOTS,
               EFUSE_BPF_QUEUE_SLOTS, [&](uint32_t qslot, const efuse_counts& v) {
                 if (v.ended == 0) return;
                 accumulate(c.queue_counts[qslot == 0 ? EFUSE_BPF_QUEUE_CLASSIC : qslot - 1], v);
               });
  }
  const int fd = bpf_map__fd(skel_->maps.spill);
  std::set<std::tuple<uint32_t, uint32_t, uint32_t>> seen;
  for_each_key(fd, sizeof(efuse_stats_key), 2 * EFUSE_BPF_MAX_STATS_KEYS, [&](const void* k) {
    efuse_stats_key key;
    std::memcpy(&key, k, sizeof key);
    if (!seen.insert({key.conn, key.opcode, key.qid}).second) return;
    efuse_counts v;
    if (!lookup_percpu_sum(fd, &key, ncpu, &v)) return;
    ConnSnapshot& c = snap.conns[key.conn];
    if (key.qid == EFUSE_BPF_QUEUE_ANY)
      accumulate(c.counts[key.opcode], v);
    else if (key.opcode == EFUSE_BPF_OPCODE_ANY)
      accumulate(c.queue_counts[key.qid], v);
  });
}

bool Telemetry::delete_hashed_start(const efuse_req_key& key,
                                    const efuse_req_start& start) const {
  if (bpf_map_delete_elem(bpf_map__fd(skel_->maps.inflight), &key) != 0) return false;
  // Only the one whose delete succeeded decrements (the programs do the same).
  __atomic_sub_fetch(&skel_->bss->inflight_hashed, 1, __ATOMIC_ACQ_REL);
  uncount_start(start);
  return true;
}

void Telemetry::drop_stale_starts(uint64_t now) const {
  auto stale = [now](uint64_t start_ns) {
    return now > start_ns && now - start_ns > kStaleInflightNs;
  };
  size_t dropped = 0;
  for (efuse_inflight_slot& s : slots()) {
    uint64_t req = slot_req(s);
    if (req <= EFUSE_BPF_SLOT_BUSY) continue;
    efuse_inflight_slot copy = s;
    if (slot_req(s) != req) continue;  // ended (and maybe reused) while read
    if (stale(copy.start.start_ns)) {
      drop_slot(s, req, copy.start);
      ++dropped;
    }
  }
  int fd = bpf_map__fd(skel_->maps.inflight);
  std::set<uint64_t> seen;
  std::vector<std::pair<efuse_req_key, efuse_req_start>> doomed;
  for_each_key(fd, sizeof(efuse_req_key), 2 * EFUSE_BPF_MAX_INFLIGHT, [&](const void* k) {
    efuse_req_key key;
    std::memcpy(&key, k, sizeof key);
    if (!seen.insert(key.req).second) return;
    efuse_req_start v;
    if (lookup_raw(fd, &key, &v) == 0 && stale(v.start_ns)) doomed.push_back({key, v});
  });
  for (const auto& [key, v] : doomed) dropped += delete_hashed_start(key, v) ? 1 : 0;
  if (dropped != 0)
    LOG_DEBUG("bpf: dropped %zu sampled starts older than %llu s", dropped,
              static_cast<unsigned long long>(kStaleInflightNs / 1000000000ULL));
}

Snapshot Telemetry::snapshot() const {
  Snapshot snap;
  std::lock_guard<std::mutex> lock(mu_);
  if (!status_.up || !skel_) return snap;
  const size_t ncpu = possible_cpus();

  read_counts(snap, ncpu);
  {
    int fd = bpf_map__fd(skel_->maps.stats);
    std::set<std::tuple<uint32_t, uint32_t, uint32_t>> seen;
    for_each_key(fd, sizeof(efuse_stats_key), 2 * EFUSE_BPF_MAX_STATS_KEYS, [&](const void* k) {
      efuse_stats_key key;
      std::memcpy(&key, k, sizeof key);
      if (!seen.insert({key.conn, key.opcode, key.qid}).second) return;
      efuse_stats v;
      if (!lookup_percpu_sum(fd, &key, ncpu, &v)) return;
      ConnSnapshot& c = snap.conns[key.conn];
      accumulate(c.ops[key.opcode], v);
      accumulate(c.queues[key.qid], v);
      accumulate(c.ctxsw, v.ctxsw);
    });
  }
  drop_stale_starts(monotonic_ns());
  {
    int fd = bpf_map__fd(skel_->maps.health);
    __u32 zero = 0;
    (void)lookup_percpu_sum(fd, &zero, ncpu, &snap.health);
  }
  // The self-check, on the sampled starts filed and taken back (totals that only grow).
  {
    __u32 zero = 0;
    efuse_sampler sum{};
    (void)lookup_percpu_sum(bpf_map__fd(skel_->maps.sampler), &zero, ncpu, &sum);
    std::string verdict = match_check_.observe(sum.filed, sum.taken);
    if (!verdict.empty()) {
      withdraw(verdict);
      return {};
    }
  }
  snap.in_flight = fusectl_.waiting();
  // Connections that no longer exist: delete their counters (a new mount that gets a
  // recycled device number must start from zero) and leave them out. Runs after the maps
  // were read, so a connection created meanwhile is either in fusectl's list or was not
  // read. Without fusectl only this mount namespace is visible: dead ones cannot be told.
  if (fusectl_.ok()) {
    for (auto it = snap.conns.begin(); it != snap.conns.end();) {
      if (snap.in_flight.count(it->first) != 0) {
        ++it;
        continue;
      }
      forget_connection(it->first);
      it = snap.conns.erase(it);
    }
  }
  return snap;
}

void Telemetry::forget_connection(uint32_t conn) const {
  auto delete_keys_of = [conn](int fd) {
    std::vector<efuse_stats_key> doomed;
    for_each_key(fd, sizeof(efuse_stats_key), 2 * EFUSE_BPF_MAX_STATS_KEYS, [&](const void* k) {
      efuse_stats_key key;
      std::memcpy(&key, k, sizeof key);
      if (key.conn == conn) doomed.push_back(key);
    });
    for (const efuse_stats_key& key : doomed) bpf_map_delete_elem(fd, &key);
  };
  delete_keys_of(bpf_map__fd(skel_->maps.stats));
  delete_keys_of(bpf_map__fd(skel_->maps.spill));
  // Its slot: zero the counters first, then free the slot, so that a connection claiming
  // it afterwards starts from zero (a dead connection sends nothing meanwhile).
  const int slots_fd = bpf_map__fd(skel_->maps.conn_slots);
  const size_t ncpu = possible_cpus();
  for (uint32_t i = 0; i < EFUSE_BPF_CONN_SLOTS; ++i) {
    uint32_t owner = EFUSE_BPF_CONN_FREE;
    if (lookup_raw(slots_fd, &i, &owner) != 0 || owner != conn) continue;
    auto zero_range = [ncpu](int fd, uint32_t first, uint32_t n) {
      std::vector<uint32_t> keys(n);
      for (uint32_t k = 0; k < n; ++k) keys[k] = first + k;
      std::vector<efuse_counts> zeros(static_cast<size_t>(n) * ncpu);
      LIBBPF_OPTS(bpf_map_batch_opts, opts);
      uint32_t count = n;
      (void)bpf_map_update_batch(fd, keys.data(), zeros.data(), &count, &opts);
    };
    zero_range(bpf_map__fd(skel_->maps.counts), i * EFUSE_BPF_OPCODE_SLOTS, EFUSE_BPF_OPCODE_SLOTS);
    zero_range(bpf_map__fd(skel_->maps.queue_counts), i * EFUSE_BPF_QUEUE_SLOTS,
               EFUSE_BPF_QUEUE_SLOTS);
    uint32_t free_slot = EFUSE_BPF_CONN_FREE;
    bpf_map_update_elem(slots_fd, &i, &free_slot, BPF_ANY);
    // The CPUs' cached slots (efuse_sampler) are void from here.
    __atomic_add_fetch(&skel_->data->conn_gen, 1, __ATOMIC_RELEASE);
  }
  for (efuse_inflight_slot& s : slots()) {
    uint64_t req = slot_req(s);
    if (req <= EFUSE_BPF_SLOT_BUSY) continue;
    efuse_inflight_slot copy = s;
    if (slot_req(s) == req && copy.start.conn == conn) drop_slot(s, req, copy.start);
  }
  int fd = bpf_map__fd(skel_->maps.inflight);
  std::vector<std::pair<efuse_req_key, efuse_req_start>> doomed;
  for_each_key(fd, sizeof(efuse_req_key), 2 * EFUSE_BPF_MAX_INFLIGHT, [&](const void* k) {
    efuse_req_key rk;
    std::memcpy(&rk, k, sizeof rk);
    efuse_req_start v;
    if (lookup_raw(fd, &rk, &v) == 0 && v.conn == conn) doomed.push_back({rk, v});
  });
  for (const auto& [rk, v] : doomed) (void)delete_hashed_start(rk, v);
  LOG_DEBUG("bpf: connection %s is gone; its counters were removed",
            connection_name(conn).c_str());
}

}  // namespace efuse::bpf

// bpf::Telemetry: efused's eBPF request telemetry for every FUSE connection on the host.
//
// start() loads bpf/efuse_telemetry.bpf.c (a libbpf skeleton built into efused), checks
// its map layouts against bpf/efuse_telemetry.h and attaches its two programs to the BTF
// tracepoints fuse_request_send and fuse_request_end. It never fails the daemon: when the
// kernel refuses (not root, no BTF, no FUSE tracepoints, verifier refusal) it logs why once
// and the object reports up() == false; efused serves its mounts regardless. EFUSE_BPF=0
// in the environment turns it off; EFUSE_BPF_SCHED=0 keeps it at level "requests" (no
// context switch counting).
//
// snapshot() reads the maps at scrape time (nothing is aggregated in between), the way
// cloudflare's ebpf_exporter does, and removes the entries of connections that no longer
// exist. Destroying the object detaches every program (RAII: TelemetrySkeleton).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bpf/mountinfo.h"
#include "bpf/skeleton.h"
#include "efuse_telemetry.h"

namespace efuse::bpf {

// One FUSE connection's counters, summed over CPUs. `counts` and `queue_counts` count every
// request; `ops`, `queues` and `ctxsw` come from the sampled ones (1 in sample_every).
struct ConnSnapshot {
  std::map<uint32_t, efuse_counts> counts;        // by opcode (clamped to OPCODE_SLOTS - 1)
  std::map<uint32_t, efuse_counts> queue_counts;  // by qid
  std::map<uint32_t, efuse_stats> ops;     // by opcode: the sampled requests' latency
  std::map<uint32_t, efuse_stats> queues;  // by qid; EFUSE_BPF_QUEUE_CLASSIC = /dev/fuse
  efuse_ctxsw_stats ctxsw{};
};

// Requests sent and not ended yet: sent - ended, or 0 while requests that were in flight
// when the programs attached (ended, never seen sent) outnumber those in flight now.
struct Snapshot {
  std::map<uint32_t, ConnSnapshot> conns;  // by connection id (mountinfo.h)
  // Every FUSE connection on the host -> requests in flight (the kernel's own count,
  // fusectl's `waiting`); empty when fusectl cannot be read (logged once at start).
  std::map<uint32_t, uint64_t> in_flight;
  efuse_health health{};
};

// Latency sampling: 1 request in N is timed (the config's telemetry_sample_every).
inline constexpr uint32_t kDefaultSampleEvery = 16;
inline constexpr uint32_t kMaxSampleEvery = EFUSE_BPF_SAMPLE_EVERY_MAX;

// Why the telemetry is off (Status::off; the `reason` label of efuse_bpf_off_reason).
inline constexpr const char* kOffDisabled = "disabled";        // the operator turned it off
inline constexpr const char* kOffUnsupported = "unsupported";  // no BTF or no FUSE tracepoints
inline constexpr const char* kOffRefused = "refused";          // the kernel refused load/attach
inline constexpr const char* kOffMismatch = "mismatch";        // self-check: sends, ends disagree

// How much the telemetry does (the config's `telemetry:`): off (no program attached),
// requests (counts, errors, latency, in flight), full (and context switches).
enum class Level { Off, Requests, Full };
const char* level_name(Level level);  // "off", "requests", "full"
std::optional<Level> parse_level(std::string_view text);

struct Status {
  bool up = false;             // the request programs are attached
  int programs_attached = 0;   // of kProgramCount
  uint64_t load_failures = 0;  // load or attach attempts the kernel refused
  std::string reason;          // why not (fully) up; "" when everything is attached
  std::string tracepoints;     // whose BTF has the FUSE tracepoints: "vmlinux", "fuse module"
  std::string off;             // when !up: one of kOff*
  std::string level = "off";   // the level running: level_name()
  uint32_t sample_every = kDefaultSampleEvery;  // sampling windows cover 1 in N of the time
  uint64_t sample_windows = 0;  // sampling windows opened (the send program attached)
};

// The self-check: a request the send program timed is remembered (filed) under its struct
// fuse_req address, and its end takes it back. On a kernel whose two tracepoints do not
// agree on that address, ends find nothing and starts pile up. Judged over windows of at
// least kWindow filed starts: when fewer than three quarters of them were taken back, the
// programs are withdrawn. Starts still in flight at a look are taken in a later window
// (the totals only grow).
class MatchCheck {
 public:
  static constexpr uint64_t kWindow = 1000;
  // "" while healthy; else the verdict (one sentence with the window's numbers).
  std::string observe(uint64_t filed, uint64_t taken);

 private:
  uint64_t base_filed_ = 0;
  uint64_t base_taken_ = 0;
};

struct Options {
  bool enabled = true;       // EFUSE_BPF=0 (or "off", "false", "no") turns telemetry off
  bool switches = true;      // EFUSE_BPF_SCHED=0: level "requests" at most
  Level level = Level::Full;  // the configuration's telemetry level
  uint32_t sample_every = kDefaultSampleEvery;  // telemetry_sample_every, 1..kMaxSampleEvery
  std::string kernel_btf = "/sys/kernel/btf/vmlinux";  // checked before loading
  // Test only (EFUSE_BPF_TEST_MISMATCH=1): sampled sends are filed under a key no end looks
  // up, so the self-check sees no start taken back (docs/bpf.md).
  bool test_mismatch = false;
  static Options from_env();
};

inline constexpr const char* kFuseTracepoints[] = {"fuse_request_send", "fuse_request_end"};

// Whose BTF describes both FUSE request tracepoints: "vmlinux" (FUSE built in) or
// "fuse module" (FUSE as a module: its BTF is the file "fuse" next to kernel_btf, read as
// split BTF on top of it; under /sys/kernel/btf/ the module is loaded first when missing,
// by opening /dev/fuse). Empty, with *reason saying why, when neither has them; then
// *kernel_lacks (if given) says whether the kernel simply has no BTF or no FUSE tracepoints
// (Linux < 6.12: a clean skip, not a failure) rather than refusing to let efused read them.
std::string find_fuse_tracepoints(const std::string& kernel_btf, std::string* reason,
                                  bool* kernel_lacks = nullptr);

class Telemetry {
 public:
  static constexpr int kProgramCount = 2;

  // Never throws and never returns null.
  static std::unique_ptr<Telemetry> start(const Options& opts);
  static std::unique_ptr<Telemetry> start() { return start(Options::from_env()); }

  ~Telemetry();
  Telemetry(const Telemetry&) = delete;
  Telemetry& operator=(const Telemetry&) = delete;

  Status status() const;
  bool up() const { return status().up; }

  // Changes the level live (a config reload): full <-> requests flips a variable the
  // programs read, nothing is reloaded and no counter resets; off detaches the programs;
  // from off they are loaded again (counters start from zero). A telemetry the kernel
  // cannot run, or that failed its self-check, stays off. Thread-safe.
  void set_level(Level level);

  // Changes the latency sampling live (a config reload): the sampling windows cover 1 in
  // `every` of the time from the next window on (1: the send program stays attached);
  // counts and histograms keep their values. Clamped to 1..kMaxSampleEvery (the
  // configuration refuses anything else). Thread-safe.
  void set_sample_every(uint32_t every);

  // Reads every map and fusectl; thread-safe (scrapes may run concurrently). Empty when
  // !up(). Runs the self-check (MatchCheck) on what it read: when sends and ends stopped
  // pairing it logs one line, detaches the programs and returns empty; from then on up() is
  // false and status().off is kOffMismatch.
  Snapshot snapshot() const;

  // Kernel ids of the loaded programs (`bpftool prog show id N`); empty when !up().
  std::vector<uint32_t> program_ids() const;

 private:
  Telemetry() = default;
  static Level effective(const Options& opts);  // the level after EFUSE_BPF, EFUSE_BPF_SCHED
  void attach();  // mu_ held: loads at effective(opts_), or stays off; sets status_
  void detach() const;  // mu_ held: detaches and unmaps; status_ says off
  // The sampling windows (sample_windows.h): a thread that attaches the send program for a
  // window and detaches it for a gap, while the telemetry is up; started with the object,
  // stopped by the destructor.
  void run_windows();
  bool open_window() const;   // mu_ held: attaches the send program; false if it failed
  void close_window() const;  // mu_ held: detaches it
  std::vector<uint32_t> ids_locked() const;
  bool load(const Options& opts, std::string* reason, bool* kernel_lacks);
  void forget_connection(uint32_t conn) const;
  void read_counts(Snapshot& snap, size_t ncpu) const;  // conn_slots, counts, queue_counts, spill
  void drop_stale_starts(uint64_t now) const;  // sampled starts whose end will never come
  // Removing a sampled start keeps the programs' counts right: inflight_hashed and the
  // start's bucket in `sampled`.
  bool delete_hashed_start(const efuse_req_key& key, const efuse_req_start& start) const;
  void drop_slot(efuse_inflight_slot& s, uint64_t req, const efuse_req_start& start) const;
  void uncount_start(const efuse_req_start& start) const;
  void withdraw(const std::string& verdict) const;  // mu_ held
  // The inflight_slots array, mapped: read and cleared without a system call per slot.
  std::span<efuse_inflight_slot> slots() const;

  Options opts_;
  // Mutable: the self-check in snapshot() may take the telemetry down.
  mutable Status status_;
  mutable TelemetrySkeleton skel_;
  mutable void* slots_map_ = nullptr;   // mmap of inflight_slots while loaded
  mutable void* buckets_map_ = nullptr;  // mmap of sampled while loaded
  mutable MatchCheck match_check_;
  FuseCtl fusectl_;  // requests in flight, live connections
  mutable std::mutex mu_;
  std::condition_variable windows_cv_;  // with mu_: sampling changed, telemetry up, stop
  bool windows_stop_ = false;
  mutable bool window_failure_logged_ = false;
  std::thread windows_;
};

}  // namespace efuse::bpf

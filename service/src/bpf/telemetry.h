// bpf::Telemetry: efused's eBPF request telemetry for every FUSE connection on the host.
//
// start() loads bpf/efuse_telemetry.bpf.c (a libbpf skeleton built into efused), checks
// its map layouts against bpf/efuse_telemetry.h and attaches its three programs to the
// BTF tracepoints fuse_request_send, fuse_request_end and sched_switch. It never fails
// the daemon: when the kernel refuses (not root, no BTF, no FUSE tracepoints, verifier
// refusal) it logs why once and the object reports up() == false; efused serves its
// mounts regardless. EFUSE_BPF=0 in the environment turns it off; EFUSE_BPF_SCHED=0
// leaves out the sched_switch program (context switch counters), whose cost is paid on
// every context switch of the host.
//
// snapshot() reads the maps at scrape time (nothing is aggregated in between), the way
// cloudflare's ebpf_exporter does, and removes the entries of connections that no longer
// exist. Destroying the object detaches every program (RAII: TelemetrySkeleton).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "bpf/skeleton.h"
#include "efuse_telemetry.h"

namespace efuse::bpf {

// One FUSE connection's counters, summed over CPUs.
struct ConnSnapshot {
  std::map<uint32_t, efuse_op_stats> ops;        // by opcode (clamped to OPCODE_SLOTS - 1)
  std::map<uint32_t, uint64_t> in_flight;        // by opcode: requests sent, not ended yet
  std::map<uint32_t, efuse_queue_stats> queues;  // by qid; EFUSE_BPF_QUEUE_CLASSIC = /dev/fuse
  efuse_ctxsw_stats ctxsw{};
};

struct Snapshot {
  std::map<uint32_t, ConnSnapshot> conns;  // by connection id (mountinfo.h)
  efuse_health health{};
};

struct Status {
  bool up = false;             // the request programs are attached
  int programs_attached = 0;   // of kProgramCount
  uint64_t load_failures = 0;  // load or attach attempts the kernel refused
  std::string reason;          // why not (fully) up; "" when everything is attached
  std::string tracepoints;     // whose BTF has the FUSE tracepoints: "vmlinux", "fuse module"
};

struct Options {
  bool enabled = true;       // EFUSE_BPF=0 (or "off", "false", "no") turns telemetry off
  bool sched_switch = true;  // EFUSE_BPF_SCHED=0 leaves the sched_switch program out
  std::string kernel_btf = "/sys/kernel/btf/vmlinux";  // checked before loading
  static Options from_env();
};

inline constexpr const char* kFuseTracepoints[] = {"fuse_request_send", "fuse_request_end"};

// Whose BTF describes both FUSE request tracepoints: "vmlinux" (FUSE built in) or
// "fuse module" (FUSE as a module: its BTF is the file "fuse" next to kernel_btf, read as
// split BTF on top of it; under /sys/kernel/btf/ the module is loaded first when missing,
// by opening /dev/fuse). Empty, with *reason saying why, when neither has them.
std::string find_fuse_tracepoints(const std::string& kernel_btf, std::string* reason);

class Telemetry {
 public:
  static constexpr int kProgramCount = 3;

  // Never throws and never returns null.
  static std::unique_ptr<Telemetry> start(const Options& opts);
  static std::unique_ptr<Telemetry> start() { return start(Options::from_env()); }

  ~Telemetry();
  Telemetry(const Telemetry&) = delete;
  Telemetry& operator=(const Telemetry&) = delete;

  const Status& status() const { return status_; }
  bool up() const { return status_.up; }

  // Reads every map; thread-safe (scrapes may run concurrently). Empty when !up().
  Snapshot snapshot() const;

  // Kernel ids of the loaded programs (`bpftool prog show id N`); empty when !up().
  std::vector<uint32_t> program_ids() const;

 private:
  Telemetry() = default;
  bool load(const Options& opts, std::string* reason);
  void forget_connection(uint32_t conn, const ConnSnapshot& c) const;
  // The inflight_slots array, mapped: read and cleared without a system call per slot.
  std::span<efuse_inflight_slot> slots() const;

  Status status_;
  TelemetrySkeleton skel_;
  void* slots_map_ = nullptr;  // mmap of inflight_slots while loaded
  mutable std::mutex mu_;
};

}  // namespace efuse::bpf

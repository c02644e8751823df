#include "bpf/telemetry.h"

#include <sys/mman.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "bpf/layout.h"
#include "bpf/libbpf_log.h"
#include "bpf/maps.h"
#include "bpf/mountinfo.h"
#include "common/log.h"
#include "common/system.h"
#include "efuse_telemetry.skel.h"

namespace efuse::bpf {
namespace {

// In-flight entries older than this are dropped once the map is half full: requests whose
// end the kernel never traces (a killed client's request still pending in the queue).
constexpr uint64_t kStaleInflightNs = 600ULL * 1000 * 1000 * 1000;
constexpr size_t kSlotsBytes = sizeof(efuse_inflight_slot) * EFUSE_BPF_INFLIGHT_SLOTS;

bool env_off(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  return std::strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
         strcasecmp(v, "no") == 0;
}

uint64_t monotonic_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
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
std::string find_fuse_tracepoints(const std::string& kernel_btf, std::string* reason) {
  if (access(kernel_btf.c_str(), R_OK) != 0) {
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
  if (where.empty())
    *reason = std::string("kernel has no ") + kFuseTracepoints[0] +
              " tracepoint (FUSE tracepoints need Linux 6.12 or later; looked in " + kernel_btf +
              " and, for FUSE as a module, " + module + ")";
  return where;
}

Options Options::from_env() {
  Options o;
  o.enabled = !env_off("EFUSE_BPF");
  o.sched_switch = !env_off("EFUSE_BPF_SCHED");
  return o;
}

std::unique_ptr<Telemetry> Telemetry::start(const Options& opts) {
  std::unique_ptr<Telemetry> t(new Telemetry());
  if (!opts.enabled) {
    t->status_.reason = "disabled by EFUSE_BPF=0";
    LOG_INFO("bpf: telemetry off: %s", t->status_.reason.c_str());
    return t;
  }
  route_libbpf_log();
  (void)take_first_libbpf_warning();
  std::string reason;
  bool loaded = false;
  try {
    loaded = t->load(opts, &reason);
  } catch (const std::exception& e) {  // bad_alloc while building messages
    reason = e.what();
  }
  if (!loaded) {
    t->skel_.reset();
    t->status_ = Status{false, 0, t->status_.load_failures + 1, reason};
    LOG_WARN("bpf: telemetry off: %s; serving mounts without kernel-side metrics",
             reason.c_str());
    return t;
  }
  if (t->status_.reason.empty() && !opts.sched_switch)
    t->status_.reason = "sched_switch left out by EFUSE_BPF_SCHED=0";
  std::string ids;
  for (uint32_t id : t->program_ids()) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  if (t->status_.programs_attached == kProgramCount)
    LOG_INFO("bpf: telemetry on: %d programs attached (fuse_request_send, fuse_request_end, "
             "sched_switch; bpftool prog show id %s; FUSE tracepoints from %s BTF)",
             t->status_.programs_attached, ids.c_str(), t->status_.tracepoints.c_str());
  else if (t->status_.load_failures == 0)  // left out on purpose
    LOG_INFO("bpf: telemetry on: %d of %d programs attached: %s", t->status_.programs_attached,
             kProgramCount, t->status_.reason.c_str());
  else
    LOG_WARN("bpf: telemetry partly on: %d of %d programs attached: %s",
             t->status_.programs_attached, kProgramCount, t->status_.reason.c_str());
  return t;
}

bool Telemetry::load(const Options& opts, std::string* reason) {
  status_.tracepoints = find_fuse_tracepoints(opts.kernel_btf, reason);
  if (status_.tracepoints.empty()) return false;

  // Attempt 1 with every program; if the kernel refuses, attempt 2 without sched_switch
  // (request accounting alone is still worth having).
  bool want_sched = opts.sched_switch;
  for (int attempt = 0; attempt < 2; ++attempt) {
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
    bpf_program__set_autoload(skel_->progs.efuse_sched_switch, want_sched);

    int err = efuse_telemetry_bpf__load(skel_.get());
    if (err != 0) {
      std::string why = "load: " + errno_text(err);
      std::string libbpf = take_first_libbpf_warning();
      // A refused bpf() is explained above; libbpf's lines then only add its generic
      // "failed to load object".
      if (!libbpf.empty() && err != -EPERM && err != -EACCES) why += " (libbpf: " + libbpf + ")";
      if (want_sched && err != -EPERM && err != -EACCES) {
        ++status_.load_failures;
        LOG_DEBUG("bpf: full load failed (%s); retrying without sched_switch", why.c_str());
        status_.reason = "sched_switch program refused: " + why;
        want_sched = false;
        continue;
      }
      *reason = why;
      return false;
    }

    struct Prog {
      bpf_program* prog;
      bpf_link** link;
      bool wanted;
    };
    Prog progs[] = {
        {skel_->progs.efuse_request_send, &skel_->links.efuse_request_send, true},
        {skel_->progs.efuse_request_end, &skel_->links.efuse_request_end, true},
        {skel_->progs.efuse_sched_switch, &skel_->links.efuse_sched_switch, want_sched},
    };
    int attached = 0;
    for (Prog& p : progs) {
      if (!p.wanted) continue;
      bpf_link* link = bpf_program__attach(p.prog);
      if (link == nullptr) {
        std::string why = std::string("attach ") + bpf_program__name(p.prog) + ": " +
                          errno_text(errno);
        if (p.prog == skel_->progs.efuse_sched_switch) {
          ++status_.load_failures;
          status_.reason = why;
          continue;
        }
        *reason = why;
        return false;  // skel_.reset() in start() detaches what was attached
      }
      *p.link = link;  // efuse_telemetry_bpf__destroy() detaches it
      ++attached;
    }
    int slots_fd = bpf_map__fd(skel_->maps.inflight_slots);
    void* m = mmap(nullptr, kSlotsBytes, PROT_READ | PROT_WRITE, MAP_SHARED, slots_fd, 0);
    if (m == MAP_FAILED) {
      *reason = "cannot map inflight_slots: " + errno_text(errno);
      return false;
    }
    slots_map_ = m;
    status_.up = true;
    status_.programs_attached = attached;
    return true;
  }
  return false;
}

std::vector<uint32_t> Telemetry::program_ids() const {
  std::vector<uint32_t> ids;
  std::lock_guard<std::mutex> lock(mu_);
  if (!skel_) return ids;
  for (bpf_program* p : {skel_->progs.efuse_request_send, skel_->progs.efuse_request_end,
                         skel_->progs.efuse_sched_switch}) {
    int fd = bpf_program__fd(p);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) ids.push_back(info.id);
  }
  return ids;
}

Telemetry::~Telemetry() {
  std::lock_guard<std::mutex> lock(mu_);
  if (slots_map_ != nullptr) munmap(slots_map_, kSlotsBytes);
  skel_.reset();
}

std::span<efuse_inflight_slot> Telemetry::slots() const {
  if (slots_map_ == nullptr) return {};
  return {static_cast<efuse_inflight_slot*>(slots_map_), EFUSE_BPF_INFLIGHT_SLOTS};
}

// A slot's unique, loaded as the BPF programs' atomic exchanges publish it.
static uint64_t slot_unique(const efuse_inflight_slot& s) {
  return __atomic_load_n(&s.unique, __ATOMIC_ACQUIRE);
}

// Empties a slot whose request will never end (its connection is gone, or it is older than
// kStaleInflightNs), unless it changed meanwhile: only a request's own end frees it
// otherwise, so a compare-and-swap from here cannot take a live request's slot.
static void clear_slot(efuse_inflight_slot& s, uint64_t unique) {
  __atomic_compare_exchange_n(&s.unique, &unique, EFUSE_BPF_SLOT_FREE, false, __ATOMIC_ACQ_REL,
                              __ATOMIC_RELAXED);
}

Snapshot Telemetry::snapshot() const {
  Snapshot snap;
  std::lock_guard<std::mutex> lock(mu_);
  if (!status_.up || !skel_) return snap;
  const size_t ncpu = possible_cpus();

  {
    int fd = bpf_map__fd(skel_->maps.op_stats);
    std::set<std::pair<uint32_t, uint32_t>> seen;
    for_each_key(fd, sizeof(efuse_op_key), 2 * EFUSE_BPF_MAX_OP_KEYS, [&](const void* k) {
      efuse_op_key key;
      std::memcpy(&key, k, sizeof key);
      if (!seen.insert({key.conn, key.opcode}).second) return;
      efuse_op_stats v;
      if (lookup_percpu_sum(fd, &key, ncpu, &v)) snap.conns[key.conn].ops[key.opcode] = v;
    });
  }
  {
    int fd = bpf_map__fd(skel_->maps.queue_stats);
    std::set<std::pair<uint32_t, uint32_t>> seen;
    for_each_key(fd, sizeof(efuse_queue_key), 2 * EFUSE_BPF_MAX_QUEUE_KEYS, [&](const void* k) {
      efuse_queue_key key;
      std::memcpy(&key, k, sizeof key);
      if (!seen.insert({key.conn, key.qid}).second) return;
      efuse_queue_stats v;
      if (lookup_percpu_sum(fd, &key, ncpu, &v)) snap.conns[key.conn].queues[key.qid] = v;
    });
  }
  {
    int fd = bpf_map__fd(skel_->maps.ctxsw_stats);
    std::set<uint32_t> seen;
    for_each_key(fd, sizeof(__u32), 2 * EFUSE_BPF_MAX_CONNS, [&](const void* k) {
      __u32 conn;
      std::memcpy(&conn, k, sizeof conn);
      if (!seen.insert(conn).second) return;
      efuse_ctxsw_stats v;
      if (lookup_percpu_sum(fd, &conn, ncpu, &v)) snap.conns[conn].ctxsw = v;
    });
  }
  const uint64_t now = monotonic_ns();
  {
    size_t used = 0;
    std::vector<std::pair<efuse_inflight_slot*, uint64_t>> stale;
    for (efuse_inflight_slot& s : slots()) {
      uint64_t unique = slot_unique(s);
      if (unique <= EFUSE_BPF_SLOT_BUSY) continue;
      efuse_inflight_slot copy = s;
      if (slot_unique(s) != unique) continue;  // ended (and maybe reused) while read
      ++used;
      if (now > copy.start.start_ns && now - copy.start.start_ns > kStaleInflightNs)
        stale.push_back({&s, unique});
      ++snap.conns[copy.conn].in_flight[copy.start.opcode];
    }
    if (used > EFUSE_BPF_INFLIGHT_SLOTS / 2)
      for (auto [s, unique] : stale) clear_slot(*s, unique);
  }
  {
    int fd = bpf_map__fd(skel_->maps.inflight);
    std::set<std::pair<uint32_t, uint64_t>> seen;
    std::vector<efuse_req_key> stale;
    for_each_key(fd, sizeof(efuse_req_key), 2 * EFUSE_BPF_MAX_INFLIGHT, [&](const void* k) {
      efuse_req_key key;
      std::memcpy(&key, k, sizeof key);
      if (!seen.insert({key.conn, key.unique}).second) return;
      efuse_req_start v;
      if (lookup_raw(fd, &key, &v) != 0) return;  // ended meanwhile
      if (now > v.start_ns && now - v.start_ns > kStaleInflightNs) stale.push_back(key);
      ++snap.conns[key.conn].in_flight[v.opcode];
    });
    if (seen.size() > EFUSE_BPF_MAX_INFLIGHT / 2) {
      for (const efuse_req_key& key : stale) bpf_map_delete_elem(fd, &key);
      if (!stale.empty())
        LOG_DEBUG("bpf: dropped %zu in-flight entries older than %llu s", stale.size(),
                  static_cast<unsigned long long>(kStaleInflightNs / 1000000000ULL));
    }
  }
  {
    int fd = bpf_map__fd(skel_->maps.health);
    __u32 zero = 0;
    (void)lookup_percpu_sum(fd, &zero, ncpu, &snap.health);
  }
  // Connections that no longer exist: delete their counters (a new mount that gets a
  // recycled device number must start from zero) and leave them out. Runs after the maps
  // were read, so a connection created meanwhile is either in the live list or was not read.
  bool host_wide = false;
  std::set<uint32_t> live = live_connections(&host_wide);
  if (host_wide) {  // else only this mount namespace is visible: cannot tell dead ones
    for (auto it = snap.conns.begin(); it != snap.conns.end();) {
      if (live.count(it->first) != 0) {
        ++it;
        continue;
      }
      forget_connection(it->first, it->second);
      it = snap.conns.erase(it);
    }
  }
  return snap;
}

void Telemetry::forget_connection(uint32_t conn, const ConnSnapshot& c) const {
  for (const auto& [opcode, v] : c.ops) {
    efuse_op_key key{conn, opcode};
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.op_stats), &key);
  }
  for (const auto& [qid, v] : c.queues) {
    efuse_queue_key key{conn, qid};
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.queue_stats), &key);
  }
  __u32 key = conn;
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.ctxsw_stats), &key);
  if (!c.in_flight.empty()) {
    for (efuse_inflight_slot& s : slots()) {
      uint64_t unique = slot_unique(s);
      if (unique > EFUSE_BPF_SLOT_BUSY && s.conn == conn) clear_slot(s, unique);
    }
    int fd = bpf_map__fd(skel_->maps.inflight);
    std::vector<efuse_req_key> doomed;
    for_each_key(fd, sizeof(efuse_req_key), 2 * EFUSE_BPF_MAX_INFLIGHT, [&](const void* k) {
      efuse_req_key rk;
      std::memcpy(&rk, k, sizeof rk);
      if (rk.conn == conn) doomed.push_back(rk);
    });
    for (const efuse_req_key& rk : doomed) bpf_map_delete_elem(fd, &rk);
  }
  LOG_DEBUG("bpf: connection %s is gone; its counters were removed",
            connection_name(conn).c_str());
}

}  // namespace efuse::bpf

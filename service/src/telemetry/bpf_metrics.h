// Metric families from the eBPF telemetry (bpf::Telemetry): kernel-side request counts,
// errors, in-flight requests and latency per FUSE connection and opcode, latency per
// queue, context switches of FUSE servers and clients, and the exporter's own health.
//
// Every FUSE connection on the host is labelled by its mount: `mount` is efused's config
// name for efused's own mounts and the mountpoint path (from /proc/self/mountinfo) for
// every other FUSE mount; `fstype` is mountinfo's type ("fuse.efuse",
// "fuse.passthrough_ll", ...). Connections not mounted in efused's mount namespace are
// labelled mount="connection:MAJOR:MINOR", fstype="unknown". Reference: docs/bpf.md.
#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bpf/mountinfo.h"
#include "bpf/telemetry.h"
#include "telemetry/source.h"

namespace efuse::telemetry {

struct OwnMount {
  std::string name;        // config name: the `mount` label of efused's own mounts
  std::string mountpoint;  // as configured
};

// log2 latency slots (nanoseconds, efuse_telemetry.h) as a Prometheus histogram with
// cumulative buckets in seconds. Bounds are the slot edges 2^k ns from 2^10 ns (~1 µs,
// which also takes every faster request) to 2^35 ns (~34 s), then +Inf.
prometheus::ClientMetric::Histogram log2_histogram(const __u64 (&slots)[EFUSE_BPF_LATENCY_SLOTS],
                                                   uint64_t sum_ns);
std::vector<double> log2_bucket_bounds();

// Builds the families from a status, a snapshot and the FUSE mount table (pure: tests
// feed it directly).
void append_bpf_families(const bpf::Status& status, const bpf::Snapshot& snapshot,
                         const std::map<uint32_t, bpf::FuseMount>& mounts,
                         const std::vector<OwnMount>& own,
                         std::vector<prometheus::MetricFamily>& out);

// Reads the telemetry (maps, /proc/self/mountinfo) now. A null `telemetry` exports
// efuse_bpf_up 0 and nothing else.
void append_bpf_families(const bpf::Telemetry* telemetry, const std::vector<OwnMount>& own,
                         std::vector<prometheus::MetricFamily>& out);

// A MetricsSource that forwards to another one and adds the BPF telemetry. efused wraps its
// Supervisor in one of these; both must outlive it.
class BpfMetricsSource final : public MetricsSource {
 public:
  BpfMetricsSource(const MetricsSource& inner, const bpf::Telemetry* telemetry)
      : inner_(inner), telemetry_(telemetry) {}
  void visit_mounts(const std::function<void(const MountView&)>& fn) const override {
    inner_.visit_mounts(fn);
  }
  DaemonView daemon() const override { return inner_.daemon(); }
  const bpf::Telemetry* bpf_telemetry() const override { return telemetry_; }

 private:
  const MetricsSource& inner_;
  const bpf::Telemetry* telemetry_;
};

}  // namespace efuse::telemetry

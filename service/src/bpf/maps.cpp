#include "bpf/maps.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>

namespace efuse::bpf {

void accumulate(efuse_ctxsw_stats& into, const efuse_ctxsw_stats& from) {
#define EFUSE_BPF_SUM(name, side, kind) into.name += from.name;
  EFUSE_BPF_CTXSW_COUNTERS(EFUSE_BPF_SUM)
#undef EFUSE_BPF_SUM
}

void accumulate(efuse_stats& into, const efuse_stats& from) {
#define EFUSE_BPF_SUM(name, help) into.name += from.name;
  EFUSE_BPF_STATS_COUNTERS(EFUSE_BPF_SUM)
#undef EFUSE_BPF_SUM
  for (size_t i = 0; i < EFUSE_BPF_LATENCY_SLOTS; ++i) into.latency[i] += from.latency[i];
  accumulate(into.ctxsw, from.ctxsw);
}

void accumulate(efuse_counts& into, const efuse_counts& from) {
#define EFUSE_BPF_SUM(name, help) into.name += from.name;
  EFUSE_BPF_COUNT_COUNTERS(EFUSE_BPF_SUM)
#undef EFUSE_BPF_SUM
}

void accumulate(efuse_sampler& into, const efuse_sampler& from) {
  into.filed += from.filed;
  into.taken += from.taken;
}

void accumulate(efuse_health& into, const efuse_health& from) {
#define EFUSE_BPF_SUM(name, reason, help) into.name += from.name;
  EFUSE_BPF_HEALTH_COUNTERS(EFUSE_BPF_SUM)
#undef EFUSE_BPF_SUM
}

bool for_each_key(int fd, size_t key_size, size_t limit,
                  const std::function<void(const void* key)>& fn) {
  std::vector<unsigned char> cur(key_size), next(key_size);
  const void* prev = nullptr;
  for (size_t n = 0; n < limit; ++n) {
    if (bpf_map_get_next_key(fd, prev, next.data()) != 0) return errno == ENOENT || n > 0;
    cur.swap(next);
    prev = cur.data();
    fn(cur.data());
  }
  return true;
}

int lookup_raw(int fd, const void* key, void* value) {
  return bpf_map_lookup_elem(fd, key, value) == 0 ? 0 : -errno;
}

size_t possible_cpus() {
  int n = libbpf_num_possible_cpus();
  return n > 0 ? static_cast<size_t>(n) : 1;
}

}  // namespace efuse::bpf

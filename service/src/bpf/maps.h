// Readers for the telemetry maps: iterate a map's keys, look each up, and sum per-CPU
// values into one. The summing loops come from the X-macro lists of efuse_telemetry.h, so
// a counter added there is summed here without touching this file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "efuse_telemetry.h"

namespace efuse::bpf {

void accumulate(efuse_stats& into, const efuse_stats& from);
void accumulate(efuse_counts& into, const efuse_counts& from);
void accumulate(efuse_ctxsw_stats& into, const efuse_ctxsw_stats& from);
void accumulate(efuse_health& into, const efuse_health& from);
// The self-check's counts only (filed, taken); the connection cache is per CPU.
void accumulate(efuse_sampler& into, const efuse_sampler& from);

// Calls fn(key) for each key of the map behind `fd`. Keys deleted while iterating may
// make the kernel restart from the first key: at most `limit` keys are visited, and callers
// deduplicate. Returns false if the map could not be read at all.
bool for_each_key(int fd, size_t key_size, size_t limit,
                  const std::function<void(const void* key)>& fn);

// bpf_map_lookup_elem; 0 or -errno.
int lookup_raw(int fd, const void* key, void* value);

// Looks `key` up in a per-CPU map and sums the `ncpu` values; false if absent.
template <class V>
bool lookup_percpu_sum(int fd, const void* key, size_t ncpu, V* out) {
  static_assert(sizeof(V) % 8 == 0, "per-CPU values are laid out in 8-byte strides");
  std::vector<V> values(ncpu);
  if (lookup_raw(fd, key, values.data()) != 0) return false;
  *out = V{};
  for (const V& v : values) accumulate(*out, v);
  return true;
}

// Number of possible CPUs (the stride count of per-CPU values); at least 1.
size_t possible_cpus();

}  // namespace efuse::bpf

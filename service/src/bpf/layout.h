// The map layouts efused expects, from the shared header (bpf/efuse_telemetry.h). Before
// loading, every map in the compiled object is checked against this table: a key or value
// size that disagrees means the object and the C++ code were built from different headers,
// and reading the maps would misinterpret every byte, so efused refuses to load.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string>

#include "efuse_telemetry.h"

struct bpf_object;

namespace efuse::bpf {

struct MapLayout {
  const char* name;
  size_t key_size;
  size_t value_size;
};

inline constexpr std::array<MapLayout, 11> kTelemetryMaps = {{
    {"inflight", sizeof(efuse_req_key), sizeof(efuse_req_start)},
    {"stats", sizeof(efuse_stats_key), sizeof(efuse_stats)},
    {"tasks", sizeof(int), sizeof(efuse_task)},
    {"health", sizeof(__u32), sizeof(efuse_health)},
    {"inflight_slots", sizeof(__u32), sizeof(efuse_inflight_slot)},
    {"conn_slots", sizeof(__u32), sizeof(__u32)},
    {"counts", sizeof(__u32), sizeof(efuse_counts)},
    {"queue_counts", sizeof(__u32), sizeof(efuse_counts)},
    {"spill", sizeof(efuse_stats_key), sizeof(efuse_counts)},
    {"sampler", sizeof(__u32), sizeof(efuse_sampler)},
    {"sampled", sizeof(__u32), sizeof(efuse_sample_bucket)},
}};

// True when every map in `layouts` exists in `obj` with those key and value sizes; else
// false with `*error` naming the first disagreement.
bool check_layout(const bpf_object* obj, std::span<const MapLayout> layouts, std::string* error);

}  // namespace efuse::bpf

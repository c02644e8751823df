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

inline constexpr std::array<MapLayout, 7> kTelemetryMaps = {{
    {"inflight", sizeof(efuse_req_key), sizeof(efuse_req_start)},
    {"op_stats", sizeof(efuse_op_key), sizeof(efuse_op_stats)},
    {"queue_stats", sizeof(efuse_queue_key), sizeof(efuse_queue_stats)},
    {"ctxsw_stats", sizeof(__u32), sizeof(efuse_ctxsw_stats)},
    {"tasks", sizeof(__u32), sizeof(efuse_task)},
    {"health", sizeof(__u32), sizeof(efuse_health)},
    {"inflight_slots", sizeof(__u32), sizeof(efuse_inflight_slot)},
}};

// True when every map in `layouts` exists in `obj` with those key and value sizes; else
// false with `*error` naming the first disagreement.
bool check_layout(const bpf_object* obj, std::span<const MapLayout> layouts, std::string* error);

}  // namespace efuse::bpf

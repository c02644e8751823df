#include "bpf/layout.h"

#include <bpf/libbpf.h>

namespace efuse::bpf {

bool check_layout(const bpf_object* obj, std::span<const MapLayout> layouts, std::string* error) {
  for (const MapLayout& l : layouts) {
    const bpf_map* map = bpf_object__find_map_by_name(obj, l.name);
    if (map == nullptr) {
      *error = std::string("map '") + l.name + "' missing from the BPF object";
      return false;
    }
    size_t key = bpf_map__key_size(map), value = bpf_map__value_size(map);
    if (key != l.key_size || value != l.value_size) {
      *error = std::string("map '") + l.name + "' has key/value size " + std::to_string(key) +
               "/" + std::to_string(value) + " in the BPF object but " +
               std::to_string(l.key_size) + "/" + std::to_string(l.value_size) +
               " in efuse_telemetry.h (object and daemon built from different headers)";
      return false;
    }
  }
  return true;
}

}  // namespace efuse::bpf

#include "telemetry/errno_names.h"

#include <cstring>

#include "fuse/stats.h"

namespace efuse::telemetry {

std::string errno_label(int slot) {
  if (slot >= fuse::kMaxErrno || slot <= 0) return "other";
  if (const char* name = strerrorname_np(slot)) return name;
  return "errno_" + std::to_string(slot);
}

}  // namespace efuse::telemetry

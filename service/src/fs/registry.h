// The backends efused can serve, created by the name the config gives (`backend:`) through
// this one registry. Adding a backend is one entry in registry.cpp; the config schema's
// `backend` enum must list the same names (a unit test holds them together).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "fs/filesystem.h"
#include "fs/memory/pool.h"

namespace efuse::fs {

// What a backend is created from: named, so a backend takes what it needs and a new
// parameter does not reorder anyone's arguments.
struct BackendParams {
  std::string source;  // the mount's `source` (the passthrough backend's backing directory)
  Policy policy;       // caching and I/O policy; replaced live with set_policy()
  memory::Limits memory;  // the memory backend's limits (`memory:`); live on reload
};

// Applies what of `params` a running backend can change without a remount (the policy;
// the memory backend's limits). `fs` must have been created as backend `name`.
void reconfigure_backend(std::string_view name, Filesystem& fs, const BackendParams& params);

// Registered names, in registration order.
std::vector<std::string_view> backend_names();
bool backend_known(std::string_view name);

// Creates backend `name`. On failure *error says why (EINVAL: no such backend; otherwise the
// backend's own errno, e.g. ENOENT for a missing source). Never throws.
Result<std::unique_ptr<Filesystem>> create_backend(std::string_view name,
                                                   const BackendParams& params,
                                                   std::string* error);

}  // namespace efuse::fs

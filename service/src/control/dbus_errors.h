// Translation of a failed Manager call (errno + detail text) into a named D-Bus error.
#pragma once

#include <string>

#include <systemd/sd-bus.h>

namespace efuse::control {

enum class Operation { GetMount, Mount, Unmount, Reload, ListHandlers, SwapHandler, RemoveHandler };

struct NamedError {
  std::string name;     // e.g. org.efuse.Manager1.Error.NoSuchMount
  std::string message;  // for humans: what failed and why (valid UTF-8)
};

// err: the positive errno the Manager returned; mount: the name the call was about ("" for
// Reload); detail: the Manager's error text (may be empty).
NamedError map_manager_error(Operation op, int err, const std::string& mount,
                             const std::string& detail);

// Fills *error and returns the negative errno sd-bus handlers return.
int set_error(sd_bus_error* error, const NamedError& named);

}  // namespace efuse::control

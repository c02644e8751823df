// Opening an sd-bus connection from a command-line style bus spec, shared by efused
// (--bus) and efusectl (--bus, EFUSE_BUS_ADDRESS).
#pragma once

#include <memory>
#include <string>

#include <systemd/sd-bus.h>

#include "common/result.h"

namespace efuse::control {

// Drops one reference; the last one closes the connection. (Not sd_bus_flush_close_unref:
// that would close a connection another owner, such as DbusService, still serves on.)
struct BusUnref {
  void operator()(sd_bus* bus) const { sd_bus_unref(bus); }
};
using BusPtr = std::unique_ptr<sd_bus, BusUnref>;

// spec: "system" or "" (the system bus; DBUS_SYSTEM_BUS_ADDRESS overrides its address),
// "session" (the user's bus), or a D-Bus server address such as "unix:path=/tmp/x/bus".
// On failure *error says which bus could not be reached and why.
Result<BusPtr> open_bus(const std::string& spec, std::string* error);

// "the system bus", "the session bus" or the address itself, for messages.
std::string describe_bus(const std::string& spec);

}  // namespace efuse::control

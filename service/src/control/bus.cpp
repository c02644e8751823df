#include "control/bus.h"

#include <cstring>

namespace efuse::control {

namespace {

bool is_system(const std::string& spec) { return spec.empty() || spec == "system"; }

int open_address(const std::string& address, sd_bus** out) {
  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  if (r < 0) return r;
  BusPtr owner(bus);
  if ((r = sd_bus_set_address(bus, address.c_str())) < 0) return r;
  if ((r = sd_bus_set_bus_client(bus, 1)) < 0) return r;
  if ((r = sd_bus_start(bus)) < 0) return r;
  *out = owner.release();
  return 0;
}

int open_spec(const std::string& spec, sd_bus** out) {
  if (is_system(spec)) return sd_bus_open_system(out);
  if (spec == "session") return sd_bus_open_user(out);
  return open_address(spec, out);
}

}  // namespace

std::string describe_bus(const std::string& spec) {
  if (is_system(spec)) return "the system bus";
  if (spec == "session") return "the session bus";
  return "bus " + spec;
}

Result<BusPtr> open_bus(const std::string& spec, std::string* error) {
  sd_bus* bus = nullptr;
  const int r = open_spec(spec, &bus);
  if (r < 0) {
    if (error != nullptr) *error = "cannot connect to " + describe_bus(spec) + ": " + strerror(-r);
    return Errno{-r};
  }
  return BusPtr(bus);
}

}  // namespace efuse::control

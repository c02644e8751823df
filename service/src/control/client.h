// A small blocking client of org.efuse.Manager1 (efusectl, tests). Not thread-safe: one
// Client per thread.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

#include "control/bus.h"

namespace efuse::control {

// What went wrong with a call, classified for exit codes and messages.
struct CallError {
  enum class Kind {
    Refused,      // efused answered with an error (no such mount, invalid config, ...)
    Denied,       // org.freedesktop.DBus.Error.AccessDenied (bus policy or efused)
    NotRunning,   // nobody owns org.efuse.Manager1
    Unreachable,  // no reply, timeout, disconnected, malformed reply
  };
  Kind kind = Kind::Refused;
  std::string name;     // D-Bus error name ("" for local failures)
  std::string message;  // human text
};

class Client {
 public:
  // Mutating calls may legitimately take long (Reload replies once applied).
  static constexpr uint64_t kChangeTimeoutUsec = 300ull * 1000 * 1000;

  explicit Client(BusPtr bus) : bus_(std::move(bus)) {}

  // Each returns true on success; otherwise fills *error.
  bool version(std::string* out, CallError* error);
  bool mount_count(uint32_t* out, CallError* error);
  bool telemetry(std::string* json_text, CallError* error);  // property Telemetry
  bool list_mounts(std::string* json_text, CallError* error);
  bool get_status(std::string* json_text, CallError* error);
  bool get_mount(const std::string& name, std::string* json_text, CallError* error);
  bool mount(const std::string& name, CallError* error);
  bool unmount(const std::string& name, CallError* error);
  bool reload(CallError* error);
  bool list_handlers(const std::string& mount, std::string* json_text, CallError* error);
  bool swap_handler(const std::string& mount, const std::string& opcode,
                    const std::string& path, CallError* error);
  bool remove_handler(const std::string& mount, const std::string& opcode, CallError* error);

 private:
  bool call(const char* member, uint64_t timeout_usec, std::initializer_list<const char*> args,
            std::string* reply_text, CallError* error);
  bool string_property(const char* name, std::string* out, CallError* error);

  BusPtr bus_;
};

// Classifies a D-Bus error (name + message, or a local negative errno when name is null).
CallError classify_error(const char* name, const char* message, int r);

}  // namespace efuse::control

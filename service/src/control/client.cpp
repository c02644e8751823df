#include "control/client.h"

#include <cerrno>
#include <cstring>
#include <string_view>

#include "control/dbus_api.h"

namespace efuse::control {

namespace {

// RAII for sd_bus_error and sd_bus_message.
struct ErrorHolder {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  ~ErrorHolder() { sd_bus_error_free(&error); }
};

struct MessageHolder {
  sd_bus_message* message = nullptr;
  ~MessageHolder() { sd_bus_message_unref(message); }
};

bool one_of(std::string_view name, std::initializer_list<std::string_view> names) {
  for (std::string_view n : names) {
    if (name == n) return true;
  }
  return false;
}

CallError::Kind kind_of(std::string_view name) {
  if (name == SD_BUS_ERROR_ACCESS_DENIED) return CallError::Kind::Denied;
  // sd-bus names local failures (connection reset, ...) after their errno.
  if (name.starts_with("System.Error.")) return CallError::Kind::Unreachable;
  if (one_of(name, {SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER})) {
    return CallError::Kind::NotRunning;
  }
  if (one_of(name, {SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_TIMEOUT, SD_BUS_ERROR_DISCONNECTED,
                    SD_BUS_ERROR_NO_SERVER, SD_BUS_ERROR_UNKNOWN_OBJECT,
                    SD_BUS_ERROR_UNKNOWN_INTERFACE, SD_BUS_ERROR_UNKNOWN_METHOD})) {
    return CallError::Kind::Unreachable;
  }
  return CallError::Kind::Refused;
}

bool fail(CallError* error, const sd_bus_error& e, int r) {
  *error = classify_error(sd_bus_error_is_set(&e) ? e.name : nullptr, e.message, r);
  return false;
}

}  // namespace

CallError classify_error(const char* name, const char* message, int r) {
  CallError out;
  if (name == nullptr) {
    out.kind = r == -EACCES || r == -EPERM ? CallError::Kind::Denied
                                           : CallError::Kind::Unreachable;
    out.message = strerror(r < 0 ? -r : EIO);
    return out;
  }
  out.name = name;
  out.kind = kind_of(out.name);
  out.message = message != nullptr && *message != '\0' ? message : name;
  return out;
}

bool Client::call(const char* member, uint64_t timeout_usec,
                  std::initializer_list<const char*> args, std::string* reply_text,
                  CallError* error) {
  MessageHolder request, reply;
  ErrorHolder e;
  int r = sd_bus_message_new_method_call(bus_.get(), &request.message, kBusName, kObjectPath,
                                         kInterface, member);
  for (const char* arg : args)
    if (r >= 0) r = sd_bus_message_append(request.message, "s", arg);
  if (r < 0) return fail(error, e.error, r);
  r = sd_bus_call(bus_.get(), request.message, timeout_usec, &e.error, &reply.message);
  if (r < 0) return fail(error, e.error, r);
  if (reply_text == nullptr) return true;
  const char* text = nullptr;
  if ((r = sd_bus_message_read(reply.message, "s", &text)) < 0) return fail(error, e.error, r);
  *reply_text = text;
  return true;
}

bool Client::string_property(const char* name, std::string* out, CallError* error) {
  ErrorHolder e;
  char* value = nullptr;
  const int r = sd_bus_get_property_string(bus_.get(), kBusName, kObjectPath, kInterface, name,
                                           &e.error, &value);
  if (r < 0) return fail(error, e.error, r);
  *out = value;
  free(value);
  return true;
}

bool Client::version(std::string* out, CallError* error) {
  return string_property("Version", out, error);
}

bool Client::mount_count(uint32_t* out, CallError* error) {
  ErrorHolder e;
  const int r = sd_bus_get_property_trivial(bus_.get(), kBusName, kObjectPath, kInterface,
                                            "MountCount", &e.error, 'u', out);
  if (r < 0) return fail(error, e.error, r);
  return true;
}

bool Client::telemetry(std::string* json_text, CallError* error) {
  return string_property("Telemetry", json_text, error);
}

bool Client::list_mounts(std::string* json_text, CallError* error) {
  return call("ListMounts", 0, {}, json_text, error);
}

bool Client::get_status(std::string* json_text, CallError* error) {
  return call("GetStatus", 0, {}, json_text, error);
}

bool Client::get_mount(const std::string& name, std::string* json_text, CallError* error) {
  return call("GetMount", 0, {name.c_str()}, json_text, error);
}

bool Client::mount(const std::string& name, CallError* error) {
  return call("Mount", kChangeTimeoutUsec, {name.c_str()}, nullptr, error);
}

bool Client::unmount(const std::string& name, CallError* error) {
  return call("Unmount", kChangeTimeoutUsec, {name.c_str()}, nullptr, error);
}

bool Client::reload(CallError* error) {
  return call("Reload", kChangeTimeoutUsec, {}, nullptr, error);
}

bool Client::list_handlers(const std::string& mount, std::string* json_text, CallError* error) {
  return call("ListHandlers", 0, {mount.c_str()}, json_text, error);
}

bool Client::swap_handler(const std::string& mount, const std::string& opcode,
                          const std::string& path, CallError* error) {
  return call("SwapHandler", kChangeTimeoutUsec, {mount.c_str(), opcode.c_str(), path.c_str()},
              nullptr, error);
}

bool Client::remove_handler(const std::string& mount, const std::string& opcode,
                            CallError* error) {
  return call("RemoveHandler", kChangeTimeoutUsec, {mount.c_str(), opcode.c_str()}, nullptr,
              error);
}

}  // namespace efuse::control

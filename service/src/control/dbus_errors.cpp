#include "control/dbus_errors.h"

#include <cerrno>
#include <cstring>

#include "control/dbus_api.h"

namespace efuse::control {

namespace {

const char* verb(Operation op) {
  switch (op) {
    case Operation::GetMount: return "get";
    case Operation::Mount: return "mount";
    case Operation::Unmount: return "unmount";
    case Operation::Reload: return "reload";
    case Operation::ListHandlers: return "list handlers of";
    case Operation::SwapHandler: return "swap a handler of";
    case Operation::RemoveHandler: return "remove a handler of";
  }
  return "?";
}

std::string quoted(const std::string& mount) { return "'" + mount + "'"; }

std::string reason(int err, const std::string& detail) {
  return detail.empty() ? std::string(strerror(err)) : detail;
}

NamedError reload_error(int err, const std::string& detail) {
  // EINVAL: the config is invalid; ENOENT: the file is gone. Either way nothing changed.
  if (err == EINVAL || err == ENOENT) return {kErrorInvalidConfig, reason(err, detail)};
  return {kErrorFailed, "reload failed: " + reason(err, detail)};
}

}  // namespace

NamedError map_manager_error(Operation op, int err, const std::string& mount,
                             const std::string& detail) {
  if (op == Operation::Reload) return reload_error(err, detail);
  if (err == ENOENT) return {kErrorNoSuchMount, "no mount named " + quoted(mount)};
  if (op == Operation::ListHandlers || op == Operation::SwapHandler ||
      op == Operation::RemoveHandler) {
    if (err == ENOTCONN) return {kErrorNotMounted, quoted(mount) + " is not mounted"};
    if (err == EOPNOTSUPP) return {kErrorNoHandlers, reason(err, detail)};
    if (err == ECANCELED) return {kErrorHandlerRefused, reason(err, detail)};
    if (err == ENODATA) return {kErrorNoSuchHandler, reason(err, detail)};
    if (err == EINVAL) return {SD_BUS_ERROR_INVALID_ARGS, reason(err, detail)};
  }
  if (op == Operation::Mount && err == EALREADY) {
    return {kErrorAlreadyMounted, quoted(mount) + " is already mounted"};
  }
  if (op == Operation::Unmount && (err == EALREADY || err == ENOTCONN)) {
    return {kErrorNotMounted, quoted(mount) + " is not mounted"};
  }
  return {kErrorFailed, std::string(verb(op)) + " " + quoted(mount) + ": " + reason(err, detail)};
}

int set_error(sd_bus_error* error, const NamedError& named) {
  const std::string message = sanitize_utf8(named.message);
  return sd_bus_error_set(error, named.name.c_str(), message.c_str());
}

}  // namespace efuse::control

// The org.efuse.Manager1 vtable and its handlers. Each method follows the same order (as
// systemd's hostnamed): read arguments, validate, authorize, act through the Manager, map
// errno to a named error, send the signals the change caused, reply.
//
// No C++ exception may unwind through sd-bus: every callback goes through a noexcept
// trampoline that turns bad_alloc into ENOMEM and anything else into Error.Failed.
#include <cerrno>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "common/log.h"
#include "control/dbus_api.h"
#include "control/dbus_errors.h"
#include "control/dbus_service.h"

namespace efuse::control {

namespace {

constexpr size_t kMaxNameInMessage = 80;

std::string to_text(const nlohmann::json& value) {
  // replace: a path with invalid UTF-8 must not make the call fail (D-Bus needs UTF-8).
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int reply_json(sd_bus_message* m, const nlohmann::json& value) {
  const std::string text = to_text(value);
  return sd_bus_reply_method_return(m, "s", text.c_str());
}

// Reads the single "s" argument; sd-bus has checked the signature already.
int read_name(sd_bus_message* m, std::string* name) {
  const char* s = nullptr;
  const int r = sd_bus_message_read(m, "s", &s);
  if (r < 0) return r;
  *name = s;
  return 0;
}

int invalid_name(sd_bus_error* error, const std::string& name) {
  const std::string shown = sanitize_utf8(name.substr(0, kMaxNameInMessage));
  return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "invalid mount name '%s': expected 1 to %zu of [A-Za-z0-9_.-]",
                           shown.c_str(), kMaxMountNameLength);
}

int caller_euid(sd_bus_message* m, uid_t* euid) {
  sd_bus_creds* creds = nullptr;
  int r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID | SD_BUS_CREDS_AUGMENT, &creds);
  if (r < 0) return r;
  r = sd_bus_creds_get_euid(creds, euid);
  sd_bus_creds_unref(creds);
  return r;
}

}  // namespace

struct DbusService::Handlers {
  using Method = int (*)(DbusService& self, sd_bus_message* m, sd_bus_error* error);
  using Getter = int (*)(DbusService& self, sd_bus_message* reply);

  template <Method M>
  static int method(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    try {
      return M(*static_cast<DbusService*>(userdata), m, error);
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    } catch (const std::exception& e) {
      return internal_error(m, error, e.what());
    } catch (...) {
      return internal_error(m, error, "unknown exception");
    }
  }

  template <Getter G>
  static int property(sd_bus*, const char*, const char*, const char* name,
                      sd_bus_message* reply, void* userdata, sd_bus_error* error) noexcept {
    try {
      return G(*static_cast<DbusService*>(userdata), reply);
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    } catch (const std::exception& e) {
      LOG_ERROR("D-Bus: property %s: %s", name, e.what());
      return sd_bus_error_setf(error, kErrorFailed, "internal error reading %s", name);
    } catch (...) {
      return sd_bus_error_setf(error, kErrorFailed, "internal error reading %s", name);
    }
  }

  static int internal_error(sd_bus_message* m, sd_bus_error* error, const char* what) {
    LOG_ERROR("D-Bus: %s failed: %s", sd_bus_message_get_member(m), what);
    return sd_bus_error_setf(error, kErrorFailed, "internal error in %s",
                             sd_bus_message_get_member(m));
  }

  // 0 when the caller may change things, else a negative errno with *error set.
  static int authorize(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    uid_t euid;
    const int r = caller_euid(m, &euid);
    if (r < 0) {
      return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                               "cannot determine the caller's user id: %s", strerror(-r));
    }
    if (euid != self.privileged_uid_) {
      return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                               "%s: permission denied (only root may change mounts and their handlers)",
                               sd_bus_message_get_member(m));
    }
    return 0;
  }

  // After a change (or a failed attempt, which may have changed states too): the signals
  // it caused go out before the reply.
  static void send_signals(DbusService& self) {
    self.emit_state_changes();
    self.emit_mount_count_if_changed();
  }

  static int list_mounts(DbusService& self, sd_bus_message* m, sd_bus_error*) {
    return reply_json(m, self.manager_.list_mounts());
  }

  static int get_mount(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    std::string name;
    int r = read_name(m, &name);
    if (r < 0) return r;
    if (!valid_mount_name(name)) return invalid_name(error, name);
    Result<nlohmann::json> mount = self.manager_.get_mount(name);
    if (!mount.ok()) {
      return set_error(error, map_manager_error(Operation::GetMount, mount.error(), name, ""));
    }
    return reply_json(m, mount.value());
  }

  // Mount and Unmount differ only in the Manager method and the error wording.
  template <Operation Op>
  static int change_mount(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    std::string name;
    int r = read_name(m, &name);
    if (r < 0) return r;
    if (!valid_mount_name(name)) return invalid_name(error, name);
    if ((r = authorize(self, m, error)) < 0) return r;
    std::string detail;
    const Status st = Op == Operation::Mount ? self.manager_.mount(name, &detail)
                                             : self.manager_.unmount(name, &detail);
    send_signals(self);
    if (!st.ok()) return set_error(error, map_manager_error(Op, st.error(), name, detail));
    return sd_bus_reply_method_return(m, "");
  }

  static int reload(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    const int r = authorize(self, m, error);
    if (r < 0) return r;
    std::string detail;
    const Status st = self.manager_.reload(&detail);
    send_signals(self);
    if (!st.ok()) {
      return set_error(error, map_manager_error(Operation::Reload, st.error(), "", detail));
    }
    return sd_bus_reply_method_return(m, "");
  }

  // Handlers (issue 20): ListHandlers(mount), SwapHandler(mount, opcode, path),
  // RemoveHandler(mount, opcode). Mutations are root only, checked after the arguments.
  static int list_handlers(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    std::string name, detail;
    int r = read_name(m, &name);
    if (r < 0) return r;
    if (!valid_mount_name(name)) return invalid_name(error, name);
    Result<nlohmann::json> table = self.manager_.list_handlers(name, &detail);
    if (!table.ok())
      return set_error(error, map_manager_error(Operation::ListHandlers, table.error(), name, detail));
    return reply_json(m, table.value());
  }

  template <Operation Op>
  static int change_handler(DbusService& self, sd_bus_message* m, sd_bus_error* error) {
    const char* name = nullptr;
    const char* opcode = nullptr;
    const char* path = nullptr;
    int r = Op == Operation::SwapHandler ? sd_bus_message_read(m, "sss", &name, &opcode, &path)
                                         : sd_bus_message_read(m, "ss", &name, &opcode);
    if (r < 0) return r;
    if (!valid_mount_name(name)) return invalid_name(error, name);
    if ((r = authorize(self, m, error)) < 0) return r;
    std::string detail;
    const Status st = Op == Operation::SwapHandler
                          ? self.manager_.swap_handler(name, opcode, path, &detail)
                          : self.manager_.remove_handler(name, opcode, &detail);
    if (!st.ok()) return set_error(error, map_manager_error(Op, st.error(), name, detail));
    return sd_bus_reply_method_return(m, "");
  }

  static int get_status(DbusService& self, sd_bus_message* m, sd_bus_error*) {
    return reply_json(m, self.manager_.daemon_status());
  }

  static int version(DbusService& self, sd_bus_message* reply) {
    const std::string v = sanitize_utf8(self.manager_.version());
    return sd_bus_message_append(reply, "s", v.c_str());
  }

  static int mount_count(DbusService& self, sd_bus_message* reply) {
    return sd_bus_message_append(reply, "u", self.current_mount_count());
  }

  static int telemetry(DbusService& self, sd_bus_message* reply) {
    const std::string text = self.manager_.telemetry().dump(-1, ' ', false,
                                                           nlohmann::json::error_handler_t::replace);
    return sd_bus_message_append(reply, "s", text.c_str());
  }
};

// Every member is SD_BUS_VTABLE_UNPRIVILEGED: sd-bus's own check (CAP_SYS_ADMIN on an
// untrusted bus) is replaced by authorize() in the mutating methods, so the rule is written
// once, here, and the caller gets a clear message.
const sd_bus_vtable* DbusService::vtable() {
  using H = Handlers;
  static const sd_bus_vtable kVtable[] = {
      SD_BUS_VTABLE_START(0),
      SD_BUS_PROPERTY("Version", "s", H::property<H::version>, 0, SD_BUS_VTABLE_PROPERTY_CONST),
      SD_BUS_PROPERTY("MountCount", "u", H::property<H::mount_count>, 0,
                      SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      SD_BUS_PROPERTY("Telemetry", "s", H::property<H::telemetry>, 0, 0),
      SD_BUS_METHOD_WITH_ARGS("ListMounts", SD_BUS_NO_ARGS, SD_BUS_RESULT("s", mounts),
                              H::method<H::list_mounts>, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("GetMount", SD_BUS_ARGS("s", name), SD_BUS_RESULT("s", mount),
                              H::method<H::get_mount>, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("Mount", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT,
                              H::method<H::change_mount<Operation::Mount>>,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("Unmount", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT,
                              H::method<H::change_mount<Operation::Unmount>>,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("Reload", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, H::method<H::reload>,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("GetStatus", SD_BUS_NO_ARGS, SD_BUS_RESULT("s", status),
                              H::method<H::get_status>, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("ListHandlers", SD_BUS_ARGS("s", mount), SD_BUS_RESULT("s", handlers),
                              H::method<H::list_handlers>, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("SwapHandler", SD_BUS_ARGS("s", mount, "s", opcode, "s", path),
                              SD_BUS_NO_RESULT, H::method<H::change_handler<Operation::SwapHandler>>,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("RemoveHandler", SD_BUS_ARGS("s", mount, "s", opcode),
                              SD_BUS_NO_RESULT,
                              H::method<H::change_handler<Operation::RemoveHandler>>,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_SIGNAL_WITH_ARGS("MountStateChanged", SD_BUS_ARGS("s", name, "s", state), 0),
      SD_BUS_VTABLE_END,
  };
  return kVtable;
}

}  // namespace efuse::control

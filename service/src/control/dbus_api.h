// The org.efuse.Manager1 D-Bus API: names shared by the service (DbusService) and its
// clients (control::Client, efusectl), plus the checks both sides apply to arguments.
//
//   object /org/efuse/Manager1, interface org.efuse.Manager1
//   methods     ListMounts() -> s        JSON array, one object per configured mount
//               GetMount(s name) -> s    JSON object of one mount
//               Mount(s name)            root only
//               Unmount(s name)          root only
//               Reload()                 root only; replies once the new config is applied
//               GetStatus() -> s         JSON object: the daemon beyond its mounts (/metrics)
//               ListHandlers(s mount) -> s             JSON array: the mount's eBPF handlers
//               SwapHandler(s mount, s opcode, s path) root only; replies once in place
//               RemoveHandler(s mount, s opcode)       root only
//   properties  Version s (const), MountCount u (emits PropertiesChanged)
//   signal      MountStateChanged(s name, s state)
#pragma once

#include <string>
#include <string_view>

namespace efuse::control {

inline constexpr const char* kBusName = "org.efuse.Manager1";
inline constexpr const char* kObjectPath = "/org/efuse/Manager1";
inline constexpr const char* kInterface = "org.efuse.Manager1";

// Named errors (the message carries the details).
inline constexpr const char* kErrorNoSuchMount = "org.efuse.Manager1.Error.NoSuchMount";
inline constexpr const char* kErrorAlreadyMounted = "org.efuse.Manager1.Error.AlreadyMounted";
inline constexpr const char* kErrorNotMounted = "org.efuse.Manager1.Error.NotMounted";
inline constexpr const char* kErrorInvalidConfig = "org.efuse.Manager1.Error.InvalidConfig";
inline constexpr const char* kErrorFailed = "org.efuse.Manager1.Error.Failed";
// Handlers (issue 20): the mount is not on the kernel module tier; the object was refused
// (the old handler stays); no handler is loaded for the opcode.
inline constexpr const char* kErrorNoHandlers = "org.efuse.Manager1.Error.NoHandlers";
inline constexpr const char* kErrorHandlerRefused = "org.efuse.Manager1.Error.HandlerRefused";
inline constexpr const char* kErrorNoSuchHandler = "org.efuse.Manager1.Error.NoSuchHandler";

// Mount names as the config allows them: [A-Za-z0-9_.-]{1,64}.
inline constexpr size_t kMaxMountNameLength = 64;
bool valid_mount_name(std::string_view name);

// D-Bus strings must be valid UTF-8 without NUL: invalid bytes become U+FFFD, NUL '?'.
std::string sanitize_utf8(std::string_view text);

}  // namespace efuse::control

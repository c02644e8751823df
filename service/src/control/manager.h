// What the control plane (D-Bus, efusectl) can ask of the daemon. The Supervisor implements
// it; the D-Bus object only translates. All methods are thread-safe.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace efuse::control {

class Manager {
 public:
  virtual ~Manager() = default;

  virtual std::string version() const = 0;
  // Mounts configured (live or not).
  virtual size_t mount_count() const = 0;
  // The daemon beyond its mounts: {"metrics": {"listen": "HOST:PORT" ("" = off),
  //   "url": "http://.../metrics" ("" when not serving), "error": "..." ("" when none)}}.
  virtual nlohmann::json daemon_status() const = 0;

  // One JSON object per configured mount:
  // {"name","mountpoint","backend","source","state": "mounted"|"failed"|"unmounted"|"starting",
  //  "error": "..." (empty when none), "transport", "io_path", "threads",
  //  "kernel": {"protocol": "7.45", "passthrough": bool, "io_uring": bool,
  //             "writeback_cache": bool, ...},
  //  "requests": <total requests served>}
  virtual nlohmann::json list_mounts() const = 0;
  // The object for one mount; ENOENT when no mount has that name.
  virtual Result<nlohmann::json> get_mount(const std::string& name) const = 0;

  // Mount a configured mount that is not live (unmounted by Unmount, or failed).
  // ENOENT: unknown name; EALREADY: already mounted; other errno with *error filled.
  virtual Status mount(const std::string& name, std::string* error) = 0;
  // Unmount a live mount (it stays configured; Mount or Reload brings it back).
  // ENOENT: unknown name; ENOTCONN (or EALREADY): not mounted; other errno with *error.
  virtual Status unmount(const std::string& name, std::string* error) = 0;
  // Re-read the config file and apply the difference; returns only once applied. On an
  // invalid config nothing changes, the errno is EINVAL (ENOENT: file missing) and *error
  // says why (file:line:column: message). Other errno: applying failed, *error says why.
  virtual Status reload(std::string* error) = 0;

  // eBPF handlers of a mount on the kernel module tier (issue 20), by opcode name:
  // [{"opcode": "lookup", "loaded": bool, "path", "prog_id", "tag", "abi", "loaded_at" (unix
  //   seconds), "swaps", "failed_swaps", "removals", "run_ns", "run_count", "answered",
  //   "fallbacks"}].
  // ENOENT: unknown mount; ENOTCONN: not mounted; EOPNOTSUPP: the mount runs on the stock
  // tier, where handlers cannot run (*error names the tier and why).
  virtual Result<nlohmann::json> list_handlers(const std::string& mount,
                                               std::string* error) const = 0;
  // Replaces (or adds) the handler of `opcode` with the object at `path`: atomically, and
  // the old one stays when the new one is refused. Errors as list_handlers, and EINVAL: no
  // handler opcode of that name, or not an absolute path; ECANCELED: the object was refused
  // (ownership, symlink, ABI, opcode, verifier: *error says why, with the verifier's log).
  virtual Status swap_handler(const std::string& mount, const std::string& opcode,
                              const std::string& path, std::string* error) = 0;
  // Removes the handler of `opcode` (its requests go to efused). ENODATA: none is loaded.
  virtual Status remove_handler(const std::string& mount, const std::string& opcode,
                                std::string* error) = 0;

  // The eBPF telemetry: {"configured": "full"|"requests"|"off" (the config's telemetry:),
  //  "level": the level running ("off" when it is not), "up": bool, "reason": why not up
  //  ("" when up), "off": "disabled"|"unsupported"|"refused"|"mismatch"|"",
  //  "sample_every": N (timing windows cover 1 in N of the time; telemetry_sample_every)}.
  virtual nlohmann::json telemetry() const = 0;

  // Called (from any thread) whenever a mount's state changes: (name, new state).
  using StateListener = std::function<void(const std::string& name, const std::string& state)>;
  virtual void set_state_listener(StateListener listener) = 0;
};

}  // namespace efuse::control

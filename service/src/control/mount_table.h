// Human views of the Manager's JSON (efusectl's tables). Tolerates missing or odd fields:
// the daemon may add fields, and a broken value must not hide the rest.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace efuse::control {

// One row per mount: NAME STATE MOUNTPOINT TRANSPORT ERROR, columns padded to fit.
// `mounts` is ListMounts' array; anything else gives an explanatory line.
std::string format_mount_table(const nlohmann::json& mounts);

// Every field of one mount (GetMount), one "key: value" per line; nested objects such as
// "kernel" are flattened to "kernel.protocol: 7.45".
std::string format_mount_details(const nlohmann::json& mount);

// "efused VERSION, N mounts (M mounted)", the /metrics line from `daemon` (GetStatus: served
// at URL, off, or why not), the telemetry line (when `telemetry` is an object:
// Manager::telemetry()), then the table.
std::string format_status(const std::string& version, uint32_t mount_count,
                          const nlohmann::json& mounts,
                          const nlohmann::json& daemon = nlohmann::json::object(),
                          const nlohmann::json& telemetry = nlohmann::json());

// "telemetry: full, timed 1 in 16 of the time" or "telemetry: off (configured full;
// unsupported: why)".
std::string format_telemetry(const nlohmann::json& telemetry);

}  // namespace efuse::control

// Routes libbpf's messages into efused's logger (at debug level: a failed load prints a
// verifier dump that an operator does not need at the default level) and remembers the
// first warning, so the one line efused logs when telemetry cannot start says why.
#pragma once

#include <string>

namespace efuse::bpf {

// Installs the print callback (idempotent, thread-safe).
void route_libbpf_log();

// The first libbpf warning since the last call, trimmed to one line ("" if none); clears it.
std::string take_first_libbpf_warning();

}  // namespace efuse::bpf

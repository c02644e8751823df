// What the schema cannot say: checks across values and against the filesystem, run on a
// Config built from a document that already matches the schema.
#pragma once

#include <string>
#include <string_view>

#include "daemon/config.h"
#include "daemon/config_yaml.h"

namespace efuse::daemon {

// "/a//b/./c/" -> "/a/b/c". `path` is absolute without ".." components (the schema says so).
std::string normalize_path(std::string_view path);

// Throws ConfigError, located in `doc`, when the metrics address is not valid, two mounts
// share a name, a mount's paths overlap its own or another's (efused must never serve its
// own mount), or a BPF handler's object file cannot be opened.
void check_semantics(const YamlDocument& doc, const Config& config);

}  // namespace efuse::daemon

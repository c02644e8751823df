// The schema side of the config loader. config/mounts.schema.json is the specification of
// the file format; config_schema.cpp carries a byte-identical copy so that efused does not
// depend on where the repository is (a unit test keeps the two equal).
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

#include "daemon/config_yaml.h"

namespace efuse::daemon {

// The text of config/mounts.schema.json.
std::string_view mounts_schema_text();
// The same, parsed.
const nlohmann::json& mounts_schema();

// The schema of the value at `path` (a property's own entry, so its annotations are kept;
// a "$ref" is not followed), or nullptr when the schema does not describe that path.
const nlohmann::json* subschema_at(const YamlPath& path);
// A keyword of `schema`, looked up on the entry itself and then along its "$ref"s; nullptr
// when absent.
const nlohmann::json* schema_keyword(const nlohmann::json& schema, const char* keyword);

// Validates `value` (doc.to_json()) against the schema. Throws ConfigError for the first
// problem in file order (a missing key last: a misspelt key usually explains it), located
// at the offending node, key or map.
void validate_against_schema(const YamlDocument& doc, const nlohmann::json& value);

}  // namespace efuse::daemon

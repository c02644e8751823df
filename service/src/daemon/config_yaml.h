// The YAML side of the config loader: parsing with errors located in the file, duplicate
// keys, conversion to JSON for schema validation, and finding nodes again by path so that
// later checks can point at file:line:column.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

namespace efuse::daemon {

// Map keys and list indices from the document root, e.g. {"mounts", "0", "cache"}.
using YamlPath = std::vector<std::string>;

class YamlDocument {
 public:
  // Parses one YAML document. Throws ConfigError on a syntax error, an empty document, a
  // second document, a root that is not a map, a key that is not a string, a key that
  // occurs twice in one map, and aliases that nest or expand absurdly far.
  YamlDocument(std::string_view text, std::string origin);

  const std::string& origin() const { return origin_; }
  const YAML::Node& root() const { return root_; }

  // The document as JSON, scalars typed by the YAML 1.2 core schema: quoted scalars are
  // strings; plain ones are null, booleans, integers or floats when they look like it.
  nlohmann::json to_json() const;

  // "mounts[0].cache" for {"mounts", "0", "cache"}; "the top level" for {}.
  std::string describe(const YamlPath& path) const;
  // "in mounts[0].cache"; "at the top level" for {}.
  std::string where(const YamlPath& path) const;
  // Whether `path` exists in the document.
  bool has(const YamlPath& path) const;
  // The text of the scalar at `path` as written (without quotes); "" for anything else.
  std::string text(const YamlPath& path) const;
  // The keys of the map at `path` in file order; empty when it is not a map.
  std::vector<std::string> keys(const YamlPath& path) const;
  // Where the value at `path` is (its key when the value is empty); the deepest existing
  // node when the path does not exist.
  YAML::Mark value_mark(const YamlPath& path) const;
  // Where the key of the value at `path` is (the value itself for list items).
  YAML::Mark key_mark(const YamlPath& path) const;

  [[noreturn]] void fail(const YAML::Mark& mark, const std::string& message) const;

 private:
  void check_keys(const YAML::Node& node, YamlPath& path, size_t& nodes) const;
  nlohmann::json to_json(const YAML::Node& node) const;

  std::string origin_;
  YAML::Node root_;
};

// 1-based line of a mark, for messages that mention a second place.
int line_of(const YAML::Mark& mark);

}  // namespace efuse::daemon
